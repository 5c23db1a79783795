"""Every graph input a PyG layer takes, read once into one view: :class:`GraphView`.

PyG layers accept the graph as

* ``edge_index``: a ``[2, E]`` integer tensor (or PyG's ``EdgeIndex``, a tensor subclass), messages flowing
  ``edge_index[0] -> edge_index[1]`` under the default ``flow="source_to_target"``;
* a sparse adjacency ``adj_t`` of shape ``[N_dst, N_src]`` (the *transposed* adjacency: ``adj_t[i, j]``
  is the edge j -> i): a torch sparse COO / CSR / CSC tensor, or torch_sparse's ``SparseTensor`` when that
  package imports; its values, when present, are edge weights;
* node features ``x`` or, for bipartite message passing (sampled blocks, two node types), a pair
  ``(x_src, x_dst)``; ``size=(N_src, N_dst)`` may say the shape.

:func:`read_graph` turns any of them into a :class:`GraphView`: per-edge ``src`` / ``dst`` ids, the two node
counts, the edge weights of a sparse input, and whether the input was sparse. Sparse inputs are aggregated
the way PyG aggregates them, by a sparse-dense matrix product (:meth:`GraphView.aggregate`): the sum
``Σ_j w_ji h_j`` is ``A · H`` with ``A`` the ``[N_dst, N_src]`` CSR matrix, so no ``[E, C]`` message tensor
exists (O(N·C + E) memory); ``edge_index`` inputs keep PyG's gather / scatter (bitwise the float layer's
result, and what a quantized per-edge slot needs).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from qgnn.errors import ConfigError

__all__ = ["GraphView", "by_target", "edge_index_of", "is_prefix_of", "is_sparse_adj", "read_graph", "split_pair",
           "to_csr", "trim_csr"]


def _sparse_tensor_type():
    try:  # torch_sparse only builds from source; absent here, present for many PyG users
        from torch_sparse import SparseTensor
    except ImportError:
        return None
    return SparseTensor


def is_sparse_adj(adj) -> bool:
    """A torch sparse tensor (COO / CSR / CSC) or a torch_sparse SparseTensor."""
    if isinstance(adj, Tensor):
        return adj.layout in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc)
    st = _sparse_tensor_type()
    return st is not None and isinstance(adj, st)


def is_prefix_of(x_dst: Tensor | None, x_src: Tensor) -> bool:
    """Whether ``x_dst`` is a view of the first rows of ``x_src`` (``x_src[:n]``): the targets of a trimmed
    sampled block (:meth:`qgnn.models.node._Stack.forward`), which are the first rows of its sources."""
    return (isinstance(x_dst, Tensor) and x_dst is not x_src and x_dst.dim() == x_src.dim() >= 1
            and x_dst.size(0) <= x_src.size(0) and x_dst.shape[1:] == x_src.shape[1:]
            and x_dst.stride() == x_src.stride() and x_dst.dtype == x_src.dtype
            and x_dst.device == x_src.device and x_dst.data_ptr() == x_src.data_ptr())


def trim_csr(adj: Tensor, n_dst: int, n_src: int) -> Tensor:
    """The first ``n_dst`` rows of a CSR ``adj_t`` as a ``[n_dst, n_src]`` CSR (views of its arrays, no copy):
    the block a layer needs when its targets are the first ``n_dst`` nodes and every edge into them comes from
    the first ``n_src`` (a sampled batch, nodes ordered by hop: PyG's ``trim_to_layer``)."""
    crow, col, val = adj.crow_indices(), adj.col_indices(), adj.values()
    e = int(crow[n_dst])
    return torch.sparse_csr_tensor(crow[: n_dst + 1], col[:e], val[:e], (n_dst, n_src), check_invariants=False)


def split_pair(x, name: str) -> tuple[Tensor, Tensor | None, bool]:
    """(x_src, x_dst, bipartite) from ``x`` or ``(x_src, x_dst)`` (x_dst may be None, as in PyG)."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ConfigError(f"{name}: bipartite input is a pair (x_src, x_dst), got {len(x)} tensors")
        x_src, x_dst = x
        for t, what in ((x_src, "x_src"), (x_dst, "x_dst")):
            if t is not None and (not isinstance(t, Tensor) or t.dim() != 2):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ConfigError(f"{name} needs {what} of shape [num_nodes, channels], got {shape}")
        if x_src is None:
            raise ConfigError(f"{name}: x_src of a bipartite pair must be a tensor, not None")
        return x_src, x_dst, True
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"{name} needs node features of shape [num_nodes, channels], got {shape}")
    return x, None, False


@dataclass
class GraphView:
    """One graph input, read: edge ``e`` carries a message ``src[e] -> dst[e]`` (the layer's ``flow``
    applied), ``weight[e]`` is its value in a sparse adjacency (None: unweighted), ``sparse`` says whether
    the input was a sparse adjacency (then :meth:`aggregate` multiplies by it instead of scattering).

    For sparse inputs the edges are ordered by target (CSR row order), so ``dst`` is sorted and ``ptr``
    (``[N_dst + 1]``) holds each target's first edge."""

    src: Tensor
    dst: Tensor
    n_src: int
    n_dst: int
    weight: Tensor | None = None
    sparse: bool = False
    ptr: Tensor | None = None

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    @property
    def edge_index(self) -> Tensor:
        """``[2, E]`` (source, target), the form ``node_protect`` and PyG utilities take."""
        return torch.stack([self.src, self.dst])

    def in_degree(self) -> Tensor:
        """Edges into each target node, ``[N_dst]`` (long)."""
        if self.ptr is not None:
            return self.ptr.diff()
        return torch.bincount(self.dst, minlength=self.n_dst)[: self.n_dst]

    def with_edges(self, src: Tensor, dst: Tensor, weight: Tensor | None) -> GraphView:
        """The same node sets with other edges (e.g. after adding self loops); a sparse view stays sparse,
        its edges re-sorted by target."""
        if not self.sparse:
            return GraphView(src, dst, self.n_src, self.n_dst, weight, False)
        order = torch.argsort(dst, stable=True)
        src, dst = src.index_select(0, order), dst.index_select(0, order)
        weight = weight.index_select(0, order) if weight is not None else None
        return GraphView(src, dst, self.n_src, self.n_dst, weight, True, _ptr(dst, self.n_dst))

    def aggregate(self, h: Tensor, weight: Tensor | None = None, reduce: str = "sum") -> Tensor:
        """``AGG_{j -> i} w_ji h_j`` for every target i, ``[N_dst, C]`` (``h``: ``[N_src, C]``; ``weight``:
        ``[E]`` or None for 1), ``reduce`` "sum" or "mean" (mean over in-edges; 0 for a node without any),
        as one sparse-dense product: no per-edge ``[E, C]`` tensor. Gradients reach ``h`` and ``weight``."""
        if reduce not in ("sum", "mean"):
            raise ValueError(f"GraphView.aggregate: reduce is 'sum' or 'mean', got {reduce!r}")
        c = h.size(-1)
        if self.num_edges == 0 or h.size(0) == 0:
            return h.new_zeros((self.n_dst, c))
        ptr = self.ptr if self.ptr is not None else None
        if ptr is None:  # an edge_index view asked to aggregate sparsely: sort once by target
            return self.with_edges(self.src, self.dst, self.weight).as_sparse().aggregate(h, weight, reduce)
        w = weight if weight is not None else h.new_ones(self.num_edges)
        if w.requires_grad:  # torch's own gradient of CSR values is very slow on CPU (22 s against 1 s a batch)
            out = _CSRMatmul.apply(ptr, self.src, self.dst, w.to(h.dtype), h, self.n_dst)
        else:
            out = torch.sparse.mm(to_csr(ptr, self.src, w.to(h.dtype), (self.n_dst, h.size(0))), h)
        if reduce == "mean":
            out = out / self.in_degree().clamp_min(1).to(out.dtype).view(-1, 1)
        return out

    def as_sparse(self) -> GraphView:
        return GraphView(self.src, self.dst, self.n_src, self.n_dst, self.weight, True,
                         self.ptr if self.ptr is not None else _ptr(self.dst, self.n_dst))


class _CSRMatmul(torch.autograd.Function):
    """``A · H`` for ``A`` the ``[N_dst, N_src]`` CSR matrix of edge values ``w``, with gradients to ``H``
    (``Aᵀ · G``, through the transposed CSR) and to ``w`` (``∂/∂w_e = ⟨G[dst_e], H[src_e]⟩``, in chunks of edges so
    no ``[E, C]`` tensor lives longer than one chunk)."""

    @staticmethod
    def forward(ctx, ptr, src, dst, w, h, n_dst):
        ctx.save_for_backward(ptr, src, dst, w, h)
        return torch.sparse.mm(to_csr(ptr, src, w, (n_dst, h.size(0))), h)

    @staticmethod
    def backward(ctx, g):
        ptr, src, dst, w, h = ctx.saved_tensors
        gw = gh = None
        if ctx.needs_input_grad[3]:
            gw = torch.empty_like(w)
            step = max(1, (1 << 22) // max(h.size(1), 1))
            for lo in range(0, w.numel(), step):
                hi = lo + step
                gw[lo:hi] = (g.index_select(0, dst[lo:hi]) * h.index_select(0, src[lo:hi])).sum(1)
        if ctx.needs_input_grad[4]:
            order = torch.argsort(src, stable=True)
            at = to_csr(_ptr(src.index_select(0, order), h.size(0)), dst.index_select(0, order),
                        w.detach().index_select(0, order), (h.size(0), g.size(0)))
            gh = torch.sparse.mm(at, g)
        return None, None, None, gw, gh, None


def by_target(src: Tensor, dst: Tensor, weight: Tensor | None, n_dst: int):
    """CSR order of the edges ``src[e] -> dst[e]``: (ptr ``[n_dst + 1]``, src, weight (or None), the stable
    permutation applied), rows being the targets, as a transposed adjacency ``adj_t`` stores them."""
    dst, order = torch.sort(dst, stable=True)
    weight = None if weight is None else weight.index_select(0, order)
    return _ptr(dst, n_dst), src.index_select(0, order), weight, order


def _ptr(dst_sorted: Tensor, n: int) -> Tensor:
    ptr = torch.zeros(n + 1, dtype=torch.long, device=dst_sorted.device)
    ptr[1:] = torch.cumsum(torch.bincount(dst_sorted, minlength=n)[:n], 0)
    return ptr


def to_csr(ptr: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A torch CSR tensor (rows = targets) without torch's "beta" warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(ptr, col, values, shape, check_invariants=False)


def _from_sparse(adj, n_src: int | None, n_dst: int | None, name: str) -> GraphView:
    st = _sparse_tensor_type()
    if st is not None and isinstance(adj, st):
        row, col, value = adj.coo()  # row-sorted (CSR order)
        shape = (int(adj.size(0)), int(adj.size(1)))
        rows, cols, vals = row, col, value
    else:
        shape = (int(adj.size(0)), int(adj.size(1)))
        if adj.layout == torch.sparse_csr:
            crow, cols, vals = adj.crow_indices(), adj.col_indices(), adj.values()
            rows = torch.repeat_interleave(torch.arange(shape[0], device=crow.device), crow.diff())
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                coo = adj.to_sparse_coo().coalesce()  # CSC and COO: coalesce sorts by (row, col)
            (rows, cols), vals = coo.indices(), coo.values()
    if vals is not None and vals.dim() != 1:
        raise ConfigError(f"{name}: a sparse adjacency needs scalar edge values, got values of shape "
                          f"{tuple(vals.shape)}")
    n_dst_adj, n_src_adj = shape
    for got, want, what in ((n_src, n_src_adj, "source"), (n_dst, n_dst_adj, "target")):
        if got is not None and got != want:
            raise ConfigError(f"{name}: the sparse adjacency adj_t has {want} {what} nodes "
                              f"(shape [N_dst, N_src] = {list(shape)}) but the features have {got}")
    rows, cols = rows.long(), cols.long()
    return GraphView(cols, rows, n_src_adj, n_dst_adj, vals, True, _ptr(rows, n_dst_adj))


def read_graph(layer, x_src: Tensor, x_dst: Tensor | None, edge_index, size=None,
               bipartite: bool = False) -> GraphView:
    """Read ``edge_index`` (any form PyG takes, see the module docstring) for ``layer`` with source features
    ``x_src`` and target features ``x_dst`` (None: the targets are the sources, or ``size[1]`` of them).

    Edges follow ``layer.flow``; a sparse adjacency needs the default ``source_to_target`` flow (as PyG).
    Bad shapes and out-of-range ids raise ConfigError naming the problem."""
    name = type(layer).__name__
    n_src = x_src.size(0)
    n_dst = x_dst.size(0) if x_dst is not None else None
    if size is not None:
        size = tuple(int(s) if s is not None else None for s in size)
        if len(size) != 2:
            raise ConfigError(f"{name}: size is (num_src_nodes, num_dst_nodes), got {size}")
        if size[0] is not None and size[0] != n_src:
            raise ConfigError(f"{name}: size[0] = {size[0]} but x_src has {n_src} rows")
        if size[1] is not None:
            if n_dst is not None and size[1] != n_dst:
                raise ConfigError(f"{name}: size[1] = {size[1]} but x_dst has {n_dst} rows")
            n_dst = size[1]
    if is_sparse_adj(edge_index):
        if getattr(layer, "flow", "source_to_target") != "source_to_target":
            raise ConfigError(f"{name}: a sparse adjacency takes flow='source_to_target' (as PyG)")
        g = _from_sparse(edge_index, n_src, n_dst if (bipartite or size is not None) else None, name)
        if not bipartite and size is None and g.n_dst != n_src:
            raise ConfigError(f"{name}: adj_t has shape {[g.n_dst, g.n_src]} but x has {n_src} rows")
        return g
    if not isinstance(edge_index, Tensor):
        raise ConfigError(f"{name} takes edge_index as a [2, num_edges] integer tensor or a sparse adjacency, "
                          f"got {type(edge_index).__name__}")
    if hasattr(edge_index, "as_tensor"):  # PyG's EdgeIndex: read its plain [2, E] data
        edge_index = edge_index.as_tensor()
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ConfigError(f"{name}: edge_index must have shape [2, num_edges], got {tuple(edge_index.shape)}")
    if edge_index.is_floating_point():
        raise ConfigError(f"{name}: edge_index must hold integer node ids, got {edge_index.dtype}")
    n_dst = n_src if n_dst is None else n_dst
    if getattr(layer, "flow", "source_to_target") == "source_to_target":
        src, dst = edge_index[0], edge_index[1]
    else:
        src, dst = edge_index[1], edge_index[0]
    return GraphView(src, dst, n_src, n_dst)


def edge_index_of(graph) -> Tensor:
    """``[2, E]`` (source, target) of an ``edge_index`` (returned as it is) or a sparse adjacency ``adj_t``."""
    if not is_sparse_adj(graph):
        return graph.as_tensor() if hasattr(graph, "as_tensor") else graph
    return _from_sparse(graph, None, None, "edge_index_of").edge_index
