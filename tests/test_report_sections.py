"""benchmarks/_report.py: a benchmark script's section is rewritten in whichever docs page holds it (the summary
docs/results.md or a page under docs/notes/), a new one is filed by its name, and the docs stay consistent
(every begin marker has its end, each section lives in one page, relative links resolve)."""

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), *sorted((DOCS / "notes").glob("*.md"))]
MARKER = re.compile(r"<!-- (begin|end):([\w.-]+) -->")


def _load_report():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("report_under_test", ROOT / "benchmarks" / "_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def report(tmp_path, monkeypatch):
    """_report with its pages redirected to a copy of docs/ under tmp_path (the real docs are never written)."""
    mod = _load_report()
    docs = tmp_path / "docs"
    (docs / "notes").mkdir(parents=True)
    (docs / "results.md").write_text("# Results\n\nsummary\n\n<!-- begin:top -->\nold top\n<!-- end:top -->\n")
    (docs / "notes" / "mixq.md").write_text(
        "# MixQ\n\n<!-- begin:mixq -->\n## old mixq\n<!-- end:mixq -->\n\nhand-written note\n\n"
        "<!-- begin:mixq-extra -->\nkeep me\n<!-- end:mixq-extra -->\n")
    (docs / "notes" / "recsys.md").write_text("# Recsys\n\n<!-- begin:recsys-a -->\nkeep a\n<!-- end:recsys-a -->\n")
    monkeypatch.setattr(mod, "RESULTS_MD", docs / "results.md")
    monkeypatch.setattr(mod, "NOTES_DIR", docs / "notes")
    return mod, docs


def test_update_rewrites_the_block_in_its_notes_page_and_leaves_the_rest(report):
    mod, docs = report
    before = {p: p.read_text() for p in [docs / "results.md", docs / "notes" / "recsys.md"]}
    page = mod.update_section("mixq", "## Mixed precision\n\nnew table, see [plot](mixq-pareto-cora.png)\n")
    assert page == docs / "notes" / "mixq.md"
    text = page.read_text()
    assert "## old mixq" not in text and "new table" in text
    assert text.count("<!-- begin:mixq -->") == 1 and text.count("<!-- end:mixq -->") == 1
    # the neighbouring section and the prose between them are untouched, and so is every other page
    assert "hand-written note" in text and "<!-- begin:mixq-extra -->\nkeep me\n<!-- end:mixq-extra -->" in text
    assert all(p.read_text() == t for p, t in before.items())
    # scripts write links relative to docs/; from docs/notes/ they need ../
    assert "[plot](../mixq-pareto-cora.png)" in text


def test_the_summary_page_keeps_its_links_and_sections_are_found_by_name_not_prefix(report):
    mod, docs = report
    mod.update_section("top", "new top [cost](cost.md) [web](https://x.org/a.md) [here](#x)")
    assert "<!-- begin:top -->\nnew top [cost](cost.md) [web](https://x.org/a.md) [here](#x)\n<!-- end:top -->" in (
        docs / "results.md").read_text()
    mod.update_section("mixq-extra", "replaced")  # "mixq" is a prefix of it: the right block must change
    text = (docs / "notes" / "mixq.md").read_text()
    assert "## old mixq" in text and "<!-- begin:mixq-extra -->\nreplaced\n<!-- end:mixq-extra -->" in text


def test_a_new_section_goes_to_the_page_of_its_prefix_else_the_summary(report):
    mod, docs = report
    assert mod.update_section("recsys-new", "### new [x](recsys.md#a)") == docs / "notes" / "recsys.md"
    text = (docs / "notes" / "recsys.md").read_text()
    assert text.startswith("# Recsys\n\n<!-- begin:recsys-a -->\nkeep a\n<!-- end:recsys-a -->")
    assert text.endswith("<!-- begin:recsys-new -->\n### new [x](../recsys.md#a)\n<!-- end:recsys-new -->\n")
    page = mod.update_section("prompts-extra", "grid")  # a notes page that does not exist yet is created
    assert page == docs / "notes" / "prompts-grid.md" and page.read_text().startswith("# ")
    assert mod.update_section("something-else", "x") == docs / "results.md"
    assert (docs / "results.md").read_text().endswith("<!-- begin:something-else -->\nx\n<!-- end:something-else -->\n")
    # rewriting a section twice does not duplicate it
    mod.update_section("recsys-new", "### again")
    assert (docs / "notes" / "recsys.md").read_text().count("<!-- begin:recsys-new -->") == 1


def test_a_begin_marker_without_its_end_is_an_error_not_a_second_copy(report):
    mod, docs = report
    page = docs / "notes" / "mixq.md"
    page.write_text("# MixQ\n\n<!-- begin:broken -->\nhalf a section\n")
    with pytest.raises(ValueError, match="broken"):
        mod.update_section("broken", "x")
    assert page.read_text() == "# MixQ\n\n<!-- begin:broken -->\nhalf a section\n"


def test_the_committed_sections_are_filed_where_update_section_finds_them(report, tmp_path, monkeypatch):
    """Rewriting a committed section with its own text changes nothing: the block (links included) is exactly
    what its script's markdown becomes in that page."""
    mod, _ = report
    copy = tmp_path / "real"
    shutil.copytree(DOCS, copy, ignore=shutil.ignore_patterns("*.png"))
    monkeypatch.setattr(mod, "RESULTS_MD", copy / "results.md")
    monkeypatch.setattr(mod, "NOTES_DIR", copy / "notes")
    before = {p: p.read_text() for p in copy.rglob("*.md")}
    for page, text in before.items():
        for name, body in re.findall(r"<!-- begin:([\w.-]+) -->\n(.*?)\n<!-- end:\1 -->", text, re.S):
            # what the script wrote: links relative to docs/ (undo the page's ../)
            raw = body.replace("](../", "](") if page.parent.name == "notes" else body
            assert mod.update_section(name, raw) == page
    assert {p: p.read_text() for p in copy.rglob("*.md")} == before


def test_every_begin_marker_in_docs_has_its_end_and_each_section_lives_in_one_page():
    seen = {}
    for page in PAGES:
        stack = []
        for kind, name in MARKER.findall(page.read_text()):
            if kind == "begin":
                assert not stack, f"{page}: section {name} begins inside {stack[-1]}"
                assert name not in seen, f"section {name} in both {seen[name]} and {page}"
                seen[name] = page
                stack.append(name)
            else:
                assert stack == [name], f"{page}: <!-- end:{name} --> without its begin"
                stack.pop()
        assert not stack, f"{page}: <!-- begin:{stack[-1]} --> has no end"
    assert seen, "no sections found in docs/"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_in_the_docs_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target} does not resolve"
        if frag and dest.suffix == ".md":
            assert frag in _anchors(dest), f"{page.relative_to(ROOT)}: no heading #{frag} in {path or page.name}"
