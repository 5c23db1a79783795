"""benchmarks/molecules.py's computed notes: the GCN 4-bit probes and the search check read the committed
results and state what they hold (the section's presence is checked by test_report_sections.py)."""

import json
import sys

from qgnn_bench_testutil import load_script


def test_gcn_probe_paragraph_counts_the_search_widths_and_the_probes():
    mod = load_script("molecules")
    text = mod._gcn_probe()
    assert text.startswith("\n\n**Why GCN at 4 bits misses**")
    total = eight = 0
    for ds in ("esol", "freesolv", "lipo"):
        r = mod._harness.load(f"molecules/{ds}-gcn-search-w48")
        for a in r["search"]["assignments"]:
            for name, slots in a.items():
                if name.startswith("convs.") and "xw" in slots:
                    total, eight = total + 1, eight + (slots["xw"] == 8)
    assert f"`xw` at 8 bits in {eight} of {total} GCN layers" in text
    probe = mod._harness.load("molecules/probes/esol-gcn-dq4-xw8")
    mean = sum(r["train_mae"] for r in probe["runs"]) / len(probe["runs"])
    assert f"`xw`: train MAE {mean:.3f}" in text


def test_gcn_probe_paragraph_needs_every_probe(monkeypatch):
    mod = load_script("molecules")
    real = mod._harness.load
    monkeypatch.setattr(sys.modules["_harness"], "load",
                        lambda name: None if name.endswith("esol-gcn-dq4-noprot") else real(name))
    assert mod._gcn_probe() == ""


def test_search_check_names_the_setting_best_on_validation(monkeypatch):
    mod = load_script("molecules")
    real = mod._harness.load
    assert "stays the best on validation" in mod._search_check()  # the committed rows: the recipe's setting

    def swapped(name):
        r = real(name)
        if name == "molecules/esol-gin-search-lam5":
            r = json.loads(json.dumps(r))
            r["metrics"]["val_mae"]["mean"] = 0.0  # now best on validation
        return r

    monkeypatch.setattr(sys.modules["_harness"], "load", swapped)
    text = mod._search_check()
    assert "λ 5 alone is now the best on validation" in text
