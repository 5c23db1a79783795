"""GNAQ with FP8 levels: the model uses the FP8 values it stores, its bytes, and the recipe making it the default."""

import pytest
import torch

from qgnn.data.synthetic import random_rec_dataset
from qgnn.errors import ConfigError
from qgnn.methods.gnaq import GNAQConfig, GNAQLightGCN
from qgnn.quant.nodewise import FP8_DTYPE
from qgnn.train import TrainConfig
from qgnn.train.rec import rec_cost


def _gnaq(level_dtype="fp8", d=16, bits=2, **kw):
    ds = random_rec_dataset(num_users=20, num_items=30, seed=0)
    m = GNAQLightGCN(ds.num_users, ds.num_items, hidden=d, bits=bits, level_dtype=level_dtype, **kw)
    m.set_graph(ds.bipartite_edge_index())
    m.init_from_pretrained(torch.randn(m.num_nodes, d, generator=torch.Generator().manual_seed(1)) * 0.1)
    return m


def _on_fp8_grid(t: torch.Tensor) -> bool:
    return torch.equal(t, t.to(FP8_DTYPE).to(torch.float32))


def test_training_and_eval_forwards_use_the_stored_fp8_levels():
    m = _gnaq()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(3):  # a few steps move the float32 copy of the levels off the FP8 grid
        m.train()
        ego = m.ego()
        assert _on_fp8_grid(ego.detach())
        loss = (ego.sum(1) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        assert m.quant.levels.grad.abs().sum() > 0 and m.delta.grad.abs().sum() > 0
        opt.step()
    assert not _on_fp8_grid(m.quant.levels.detach())
    m.eval()
    with torch.no_grad():
        ego = m.ego()
    assert _on_fp8_grid(ego)
    # the eval table is the gather of the exported FP8 levels at the exported codes
    stored = m.export()
    assert stored["levels"].dtype == FP8_DTYPE
    assert torch.equal(torch.gather(stored["levels"].to(torch.float32), 1, m.codes.long()), ego)
    # at most 2^b distinct values per node
    assert max(torch.unique(row).numel() for row in ego) <= 4


def test_fp32_levels_are_unchanged_by_the_option():
    m8, m32 = _gnaq("fp8"), _gnaq("fp32")
    assert torch.equal(m8.quant.levels, m32.quant.levels)  # same float32 initialisation
    m32.eval()
    assert m32.export()["levels"].dtype == torch.float32 and not _on_fp8_grid(m32.ego())


@pytest.mark.parametrize("level_dtype, ratio, avg_bits", [("fp8", 12.8, 2.5), ("fp32", 8.0, 4.0)])
def test_bytes_at_2_bits_and_d_64(level_dtype, ratio, avg_bits):
    m = _gnaq(level_dtype, d=64)
    c = rec_cost(m)
    n = m.num_nodes
    assert c["code_bytes"] == n * 64 * 2 // 8
    assert c["level_bytes"] == n * 4 * (1 if level_dtype == "fp8" else 4)
    assert c["model_bytes"] == c["code_bytes"] + c["level_bytes"] and c["model_bytes_fp32"] == 4 * n * 64
    assert c["compression"] == pytest.approx(ratio) and c["avg_bits"] == pytest.approx(avg_bits)


def test_recipe_makes_fp8_the_default_and_records_it():
    base = dict(dataset="ml-100k", model="lightgcn", method="gnaq", bits=2, quant={"pretrained": "fp32.ckpt"})
    plain = TrainConfig(**base).resolve("rec")
    assert plain.quant["options"] == {"level_dtype": "fp8"}
    assert any(r.startswith("gnaq-") and "fp8" in r for r in plain.recipes)
    pinned = TrainConfig(**{**base, "quant": {**base["quant"], "options": {"level_dtype": "fp32"}}}).resolve("rec")
    assert pinned.quant["options"] == {"level_dtype": "fp32"}
    assert GNAQConfig().level_dtype == "fp32"  # a config recorded before FP8 levels rebuilds its float32 model
    with pytest.raises(ConfigError, match="level_dtype"):
        GNAQConfig.from_dict({"level_dtype": "fp16"})
    with pytest.raises(ConfigError, match="level_dtype"):
        TrainConfig(**{**base, "quant": {**base["quant"], "options": {"level_dtype": "int8"}}}).resolve("rec")
