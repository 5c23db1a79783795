"""The LightGCN runtime from the packed table: what it holds, and its int8 ranking against the float reference.

Quantized tables are built from a random FP32 table by each method's own initialisation (GNAQ's node-aware
levels, QAT's min / max grid, LSQ's step), exported and loaded as ``qgnn eval`` does; the graph is the
synthetic interaction set's. The ranking (``rec_rank.topk_int8``) is also checked on random embeddings
with awkward shapes (item counts off the group size, one user, every item excluded, ties, forced
fallbacks) against the plain float GEMM + topk.
"""

import math

import pytest
import torch

from qgnn.data import load_dataset
from qgnn.errors import ConfigError
from qgnn.export import load_int_model
from qgnn.export.evaluate import evaluate_file
from qgnn.export.format import read_file, write_file
from qgnn.export.rec import RecIntModel
from qgnn.export.rec_export import export_rec_model
from qgnn.export.rec_rank import GROUP, Int8Items, metrics_from_topk, topk_int8, topk_reference
from qgnn.train.rec import RecTask
from qgnn.train.rec_metrics import UserItemIndex, rank_metrics

HIDDEN = 24
TOL = 1e-5  # relative: the re-scored float32 dot products against the float GEMM's


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("synthetic-rec")
    return ds, RecTask(ds)


def quantized(method, bits, ds, task, seed=0):
    """A quantized LightGCN initialised from a random FP32 table (no training), eval mode, with its graph."""
    from qgnn.methods.gnaq import GNAQLightGCN
    from qgnn.methods.rec_baselines import QuantTableLightGCN

    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(ds.num_users + ds.num_items, HIDDEN, generator=gen) * 0.1
    if method.startswith("gnaq"):  # "gnaq-fp8": FP8 levels; "gnaq": the model's own default (float32)
        m = GNAQLightGCN(ds.num_users, ds.num_items, hidden=HIDDEN, bits=bits,
                         level_dtype="fp8" if method == "gnaq-fp8" else "fp32")
        m.set_graph(task.edge_index)
        m.init_from_pretrained(w)
    else:
        m = QuantTableLightGCN(ds.num_users, ds.num_items, hidden=HIDDEN, bits=bits, kind=method)
        m.set_graph(task.edge_index)
        with torch.no_grad():
            m.embedding.weight.copy_(w)
        m.train()
        with torch.no_grad():
            m.ego()  # the quantizer takes its range / step from the table, as in the first training step
    return m.eval()


def exported(tmp_path, method, bits, ds, task):
    fq = quantized(method, bits, ds, task)
    tensors, desc = export_rec_model(fq, {"dataset": "synthetic-rec"})
    path = write_file(tmp_path / f"{method}{bits}.qgnn.safetensors", tensors, desc)
    im = load_int_model(path)
    assert isinstance(im, RecIntModel)
    return fq, im.set_graph(task.edge_index), path


def same_lists(a_ids, a_vals, b_ids, b_vals):
    """Fraction of users with the same top-k set; asserts scores agree and order differs only at near-ties."""
    fin = torch.isfinite(b_vals)
    assert torch.equal(torch.isfinite(a_vals), fin)
    scale = b_vals[fin].abs().max() if fin.any() else torch.tensor(1.0)
    assert torch.allclose(a_vals[fin], b_vals[fin], rtol=0, atol=TOL * float(scale))
    same = [set(x[f].tolist()) == set(y[f].tolist()) for x, y, f in zip(a_ids, b_ids, fin, strict=True)]
    return sum(same) / max(len(same), 1)


METHODS = [(m, b) for m in ("gnaq", "qat", "lsq") for b in (8, 4, 2)] + [("gnaq-fp8", 8), ("gnaq-fp8", 2)]


@pytest.mark.parametrize("method,bits", METHODS)
def test_packed_table_is_held_and_ranks_like_the_fake_quant_model(tmp_path, data, method, bits):
    ds, task = data
    fq, im, _ = exported(tmp_path, method, bits, ds, task)
    n, d = im.num_nodes, im.hidden
    # held: the packed codes (b bits per entry) + levels or scale / zero-point; no float32 [N, d] table
    codes = im.table.codes
    assert codes.dtype == torch.uint8 and codes.numel() == n * d * bits // 8
    extra = {"gnaq": 4, "gnaq-fp8": 1}.get(method, 0) * n * 2 ** bits or 8  # levels: 4 / 1 bytes; QAT / LSQ: s, z
    assert im.table_bytes == codes.numel() + extra
    held = im.held_tensors()
    found = [v for obj in (im, im.table, im.adj) for v in vars(obj).values() if isinstance(v, torch.Tensor)]
    assert all(any(v is h for h in held.values()) for v in found if v is not im.edge_index)  # a complete list
    floats = {k for k, t in held.items() if t.is_floating_point()}
    assert floats == {"table.levels" if method.startswith("gnaq") else "table.scale", "graph.weight"}  # Â's values
    if method.startswith("gnaq"):
        assert held["table.levels"].shape == (n, 2 ** bits)  # the per-node levels, not embeddings
    assert held["graph.weight"].dim() == 1 and held["table.codes"].dtype == torch.uint8
    assert 4 * n * d // codes.numel() == 32 // bits
    # decoding reproduces the fake-quant table, and the final embeddings, bit for bit
    with torch.no_grad():
        assert torch.equal(im.ego, fq.ego())
        ue, ie = fq()
    ue2, ie2 = im()
    assert torch.equal(ue2, ue) and torch.equal(ie2, ie)
    # ranking: int8 path against the fake-quant model's float ranking (test protocol)
    excl = [task.train_idx, task.val_idx]
    users = torch.arange(ds.num_users)
    stats = {}
    a = im.rank(users, excl, 20, chunk=16, stats=stats)
    b = topk_reference(ue, ie, users, excl, 20, chunk=16)
    assert same_lists(*a, *b) >= 0.999
    assert stats["users"] == ds.num_users == stats["proved"] + stats["retried"] + stats["fallback"]
    assert same_lists(*im.rank(users, excl, 20, path="reference"), *b) == 1.0
    # the evaluation: the fake-quant model's figures
    ref = task.evaluate(fq, "test")
    got = im.evaluate(task, "test")
    assert got.keys() == ref.keys() and all(abs(got[k] - ref[k]) < 1e-9 for k in ref)


def random_case(users, items, d, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(users, d, generator=gen) * scale, torch.randn(items, d, generator=gen) * scale


@pytest.mark.parametrize("users,items,d,k,chunk", [
    (1, 5, 3, 20, 256),       # k above the item count
    (37, 2 * GROUP + 3, 5, 20, 8),    # items not a multiple of the group size, d odd
    (64, 3001, 16, 20, 25),   # enough groups for the group-maximum selection
    (200, 1000, 64, 10, 256),
])
def test_int8_ranking_matches_float_reference(users, items, d, k, chunk):
    ue, ie = random_case(users, items, d, seed=users + items)
    gen = torch.Generator().manual_seed(1)
    pairs = torch.stack([torch.randint(0, users, (users * 3,), generator=gen),
                         torch.randint(0, items, (users * 3,), generator=gen)])
    excl = [UserItemIndex(pairs, users, items)]
    u = torch.arange(users)
    stats = {}
    a = topk_int8(ue, Int8Items(ie), u, excl, k, chunk=chunk, stats=stats)
    b = topk_reference(ue, ie, u, excl, k, chunk=chunk)
    assert a[0].shape == b[0].shape == (users, min(k, items))
    assert same_lists(*a, *b) == 1.0
    assert stats["users"] == users and stats["fallback"] == 0


def test_every_stage_of_the_proof_and_the_fallback_give_the_same_lists():
    ue, ie = random_case(50, 2000, 8, seed=3)
    u = torch.arange(50)
    ref = topk_reference(ue, ie, u, [], 20)
    for candidates, retry in ((21, 1), (21, 2), (40, 4)):
        stats = {}
        got = topk_int8(ue, Int8Items(ie), u, [], 20, candidates=candidates, retry=retry, stats=stats)
        assert same_lists(*got, *ref) == 1.0
        assert stats["proved"] + stats["retried"] + stats["fallback"] == 50
    # a single extra candidate cannot cover 8-bit rounding: the float fallback must have run
    stats = {}
    topk_int8(ue, Int8Items(ie), u, [], 20, candidates=21, retry=1, stats=stats)
    assert stats["fallback"] > 0


def test_ties_excluded_items_and_zero_embeddings():
    ue = torch.zeros(4, 8)
    ue[1] = 1.0
    ie = torch.ones(100, 8)  # every score ties: no proof possible, the fallback ranks them
    everything = UserItemIndex(torch.stack([torch.full((100,), 2), torch.arange(100)]), 4, 100)
    u = torch.arange(4)
    stats = {}
    ids, vals = topk_int8(ue, Int8Items(ie), u, [everything], 20, stats=stats)
    assert torch.isinf(vals[2]).all() and (vals[2] < 0).all()  # user 2: every item excluded
    assert torch.equal(vals[1], torch.full((20,), 8.0)) and torch.equal(vals[0], torch.zeros(20))
    assert stats["users"] == 4
    ids, vals = topk_int8(torch.zeros(3, 8), Int8Items(torch.zeros(40, 8)), torch.arange(3), [], 5)
    assert torch.equal(vals, torch.zeros(3, 5))


def test_metrics_from_topk_equal_rank_metrics(data):
    ds, task = data
    ue, ie = random_case(ds.num_users, ds.num_items, 16, seed=5)
    users = torch.nonzero(task.test_idx.counts > 0).flatten()
    excl = [task.train_idx, task.val_idx]
    ids, vals = topk_reference(ue, ie, users, excl, 20)
    ref = rank_metrics(ue, ie, task.test_idx, excl, batch_users=task.eval_batch_users)
    assert metrics_from_topk(users, ids, vals, task.test_idx, batch_users=task.eval_batch_users) == ref


def test_bad_inputs_give_one_config_error_line(tmp_path, data):
    ds, task = data
    _, im, path = exported(tmp_path, "qat", 4, ds, task)
    wrong = UserItemIndex(task.train_pairs, ds.num_users + 1, ds.num_items)
    cases = [
        (lambda: im.rank(torch.arange(3), [wrong]), "users"),
        (lambda: im.rank(torch.tensor([ds.num_users])), "user ids"),
        (lambda: im.rank(torch.arange(3), path="fast"), "ranking path"),
        (lambda: im.rank(torch.arange(3), k=0), "k and chunk"),
        (lambda: im.set_graph(torch.tensor([[0], [im.num_nodes]])), "users"),
        (lambda: topk_int8(torch.zeros(2, 3), Int8Items(torch.zeros(4, 5)), torch.arange(2), [], 2), "float32"),
    ]
    cases.append((lambda: evaluate_file(path, dataset="ml-100k", repeats=1), "943 users"))  # another dataset
    for fn, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)
    fresh = RecIntModel(*read_file(tmp_path / "qat4.qgnn.safetensors"))
    with pytest.raises(ConfigError, match="set_graph"):
        fresh.rank(torch.arange(2))
    assert math.isfinite(float(im.rank(torch.arange(2))[1][0, 0]))
