"""Layer-wise full-graph inference equals the plain eval forward, for every layer kind and method."""

from __future__ import annotations

import pytest
import torch

from qgnn import quantize_
from qgnn.errors import ConfigError
from qgnn.models.layerwise import layerwise_forward, supports_layerwise
from qgnn.models.node import GAT, GCN, GIN, SAGE
from qgnn.nn import QuantModule, set_integer_aggregation
from qgnn.testing.graphs import graph

MODELS = {"gcn": lambda: GCN(12, 16, 5), "gin": lambda: GIN(12, 16, 5), "sage": lambda: SAGE(12, 16, 5),
          "gat": lambda: GAT(12, 4, 5, heads=2)}
METHODS = [None, ("qat", 8), ("lsq", 4), ("dq", 4), ("a2q", 4)]


def _model(name, method, n, x, ei):
    torch.manual_seed(0)
    model = MODELS[name]()
    if method is not None:
        quantize_(model, {"method": method[0], "bits": method[1]})
    model = model.to(x.dtype).train()
    for _ in range(2):  # observers / learned steps see the graph
        model(x, ei)
    return model.eval()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: "fp32" if m is None else f"{m[0]}{m[1]}")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_layerwise_equals_the_plain_forward(name, method):
    n = 120
    x, ei = graph(n, 600, 12, 0, isolated=5)
    x, ei = x.double(), ei  # float64: chunked sums cannot move a value across a code boundary
    model = _model(name, method, n, x, ei)
    with torch.no_grad():
        plain = model(x, ei)
    got = layerwise_forward(model, x, ei, chunk_size=37)
    torch.testing.assert_close(got, plain, rtol=1e-9, atol=1e-9)
    assert not model.training


@pytest.mark.parametrize("name", ["gcn", "gin", "sage"])
def test_layerwise_integer_aggregation_equals_the_plain_integer_forward(name):
    n = 90
    x, ei = graph(n, 400, 12, 1, isolated=3)
    model = _model(name, ("qat", 8), n, x, ei)
    assert set_integer_aggregation(model)
    with torch.no_grad():
        plain = model(x, ei)
    calls = []
    inner = QuantModule._integer_gather

    def spy(self, *a, **kw):
        calls.append(type(self).__name__)
        return inner(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(QuantModule, "_integer_gather", spy)
        got = layerwise_forward(model, x, ei, chunk_size=25)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    assert len(calls) == 2 * 4  # both layers, every one of the 4 chunks took the integer path


def test_one_chunk_and_many_chunks_agree_and_bad_input_is_refused():
    x, ei = graph(40, 160, 12, 2)
    model = _model("sage", ("qat", 8), 40, x, ei)
    torch.testing.assert_close(layerwise_forward(model, x, ei, chunk_size=1),
                               layerwise_forward(model, x, ei, chunk_size=10_000))
    with pytest.raises(ConfigError, match="chunk size"):
        layerwise_forward(model, x, ei, chunk_size=0)
    with pytest.raises(ConfigError, match="stack"):
        layerwise_forward(torch.nn.Linear(3, 3), x, ei)
    assert supports_layerwise(model) and not supports_layerwise(torch.nn.Linear(3, 3))
