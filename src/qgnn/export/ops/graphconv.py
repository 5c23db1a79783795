"""GraphConv in the runtime (the layer: :mod:`qgnn.nn.graphconv`): ``y_i = Q_aggr(AGG_j x̂_j) Ŵ_relᵀ + b +
x̂_i Ŵ_rootᵀ`` with AGG a sum (GraphConv's default) or a mean.

* per-layer op: the neighbour sum on the input codes (integer, exact) when the input has one scale per tensor or
  channel, else in float; both matmuls through the per-layer runtime's linear;
* packed op: SAGE's packed op with a sum or mean and the root term always on (``qgnn.export.packed``);
* FP32 twin: PyG's ``GraphConv`` with the dequantized weights;
* spec check: ``weight`` and ``weight_root`` [out, in], the ``aggr`` slot at the input width; LoRAP's width in
  a prompted file: the input width.
"""

from __future__ import annotations

from torch_geometric.nn import GraphConv
from torch_geometric.utils import scatter

from qgnn.errors import CheckpointError

from ..format import _fail, _float_or_weight, act_specs, layer_spec_check
from ..fp32_reference import _opt, _set, _weight, fp32_op
from ..packed_ops import PackedSAGE, packed_op
from ..prompt_format import register_aggregate_width
from ..runtime import QTensor, _Conv, _linear, _raw_plan, _requant, runtime_op
from ..runtime import _weight as _rt_weight

__all__ = ["GraphConvOp", "PackedGraphConv"]

REDUCE = {"sum": "sum", "add": "sum", "mean": "mean"}


@runtime_op("graphconv")
class GraphConvOp(_Conv):
    normalize = False  # what the packed SAGE op reads

    def __init__(self, layer, tensors, where):
        super().__init__(layer, tensors, where)
        self.reduce = REDUCE.get(layer["options"]["aggr"])
        if self.reduce is None:
            raise CheckpointError(f"{where}: GraphConv aggregation {layer['options']['aggr']!r} is not supported")
        self.weight = _rt_weight(layer, "weight", tensors, where)
        self.root = _rt_weight(layer, "weight_root", tensors, where)

    def __call__(self, x, edge_index, ctx):
        n = x.size(0)
        plan = _raw_plan(self, edge_index, n, ctx)
        xq = self._in(x)
        if isinstance(xq, QTensor) and xq.column_factorable:
            out = plan.accumulate(xq.centered(), None, ctx.agg).to(x.dtype).mul_(xq.scale)
            ctx.paths[f"{self.name}.aggregate"] = "integer"
        else:
            xf = xq.dequant() if isinstance(xq, QTensor) else xq
            out = scatter(xf.index_select(0, plan.src), plan.dst, 0, dim_size=n, reduce="sum")
            ctx.paths[f"{self.name}.aggregate"] = "float (fake-quant)"
        if self.reduce == "mean":
            out = out / plan.deg.clamp(min=1).to(out.dtype).view(-1, 1)
        aggr_q = self.q.get("aggr")  # codes of the aggregate: lin_rel runs on integers
        out = _linear(f"{self.name}.lin_rel", aggr_q(out) if aggr_q is not None else out, self.weight, self.bias, ctx)
        out = out + _linear(f"{self.name}.lin_root", xq, self.root, None, ctx)
        return _requant(self.q.get("output"), out)


@packed_op("graphconv")
class PackedGraphConv(PackedSAGE):
    """SAGE's packed op: the same chunks (aggregate at the input width, lin_rel on Q_aggr(a), lin_root on
    the codes), with GraphConv's reduction and no normalisation."""

    LINEAR_NAMES = ("lin_rel", "lin_root")


@fp32_op("graphconv")
def _fp32(layer: dict, tensors, where: str):
    bias = _opt(tensors, layer.get("bias"))
    m = GraphConv(layer["in"], layer["out"], aggr=REDUCE.get(layer["options"]["aggr"], "sum"), bias=bias is not None)
    _set(m.lin_rel.weight, _weight(layer, "weight", tensors, where), f"{where}.weight")
    _set(m.lin_rel.bias, bias, f"{where}.bias")
    _set(m.lin_root.weight, _weight(layer, "weight_root", tensors, where), f"{where}.weight_root")
    return m


register_aggregate_width("graphconv", lambda layer: layer["in"])  # LoRAP on the aggregate (qgnn.nn.graphconv)


@layer_spec_check("graphconv", ("input", "weight", "weight_root", "aggr", "output"))
def _check(layer: dict, slots: dict, k_in: int, k_out: int, specs: dict, where: str) -> None:
    if (layer.get("options") or {}).get("aggr") not in REDUCE:
        _fail(f"{where}: GraphConv aggregation must be sum or mean")
    _float_or_weight(layer, "weight", (k_out, k_in), specs, where)
    _float_or_weight(layer, "weight_root", (k_out, k_in), specs, where)
    act_specs(slots.get("aggr"), f"{where}.aggr", k_in, specs)

