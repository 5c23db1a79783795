"""LightGCN (He et al., SIGIR 2020, "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation") on the user-item bipartite graph.

Users are nodes 0..U-1, items U..U+I-1. With the symmetric normalised adjacency
Â = D^{-1/2} A D^{-1/2} of the (undirected) training interactions::

    E^(k+1) = Â E^(k),    E_final = (E^(0) + E^(1) + ... + E^(L)) / (L + 1),    ŷ_ui = <e_u, e_i>

E^(0) is the only parameter (the ego embedding table). One propagation is PyG's ``LGConv(normalize=True)``;
:meth:`LightGCN.propagate_reference` runs exactly that, layer by layer, and is the specification of the fast
path :class:`NormAdj` (a CSR ``embedding_bag`` product, several times faster than ``torch.sparse.mm`` on
CPU; its backward is the same product because Â is symmetric). Tests compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import LGConv

from qgnn.errors import ConfigError


class _SymProduct(torch.autograd.Function):
    """y = M x for a symmetric sparse M given in CSR; dL/dx = Mᵀ g = M g (the same kernel)."""

    @staticmethod
    def forward(ctx, x, op):
        ctx.op = op
        return op.apply_raw(x)

    @staticmethod
    def backward(ctx, g):
        return ctx.op.apply_raw(g.contiguous()), None


class _RowProduct(torch.autograd.Function):
    """y = (M x)[idx] from the CSR rows idx only; dL/dx = M[idx]ᵀ g."""

    @staticmethod
    def forward(ctx, x, idx, op):
        ctx.idx, ctx.op, ctx.n = idx, op, x.size(0)
        return op.rows_raw(x, idx)

    @staticmethod
    def backward(ctx, g):
        # M[idx]ᵀ g = M (Sᵀ g) with S the row selection and M symmetric: a product with a table that is zero
        # outside idx, much faster than scattering g over every nonzero of those rows (index_add_ on CPU)
        rows, inv = torch.unique(ctx.idx, return_inverse=True)
        sg = g.new_zeros(rows.numel(), g.size(1)).index_add_(0, inv, g)
        return ctx.op.apply_from_rows(sg, rows), None, None


class _LayerMeanRows(torch.autograd.Function):
    """(F[idx], x0[idx]) with F = (x0 + Âx0 + ... + Â^L x0) / (L + 1), in one autograd node.

    Backward, with z = Sᵀ g_F / (L + 1) (S the row selection idx) and Â symmetric:
    dL/dx0 = Sᵀ g_x0 + Σ_{k=0..L} Â^k z = Sᵀ g_x0 + z + Â(z + Â(z + ...)) (Horner): L products, the first
    on a table that is zero outside idx (:meth:`NormAdj.apply_from_rows`), and no whole-table additions,
    where the layer-by-layer autograd graph keeps a gradient table per layer, a zero-filled scatter per row
    selection and an addition per sum."""

    @staticmethod
    def forward(ctx, x0, idx, op, num_layers):
        ctx.idx, ctx.op, ctx.num_layers, ctx.n = idx, op, num_layers, x0.size(0)
        x0 = x0.detach()  # the products need no autograd bookkeeping here
        ego = x0.index_select(0, idx)
        acc, h = ego.clone(), x0
        for _ in range(num_layers - 1):
            h = op.apply_raw(h)
            acc += h.index_select(0, idx)
        if num_layers:
            acc += op.rows_raw(h, idx)  # the last layer is only needed on the rows idx
        return acc / (num_layers + 1), ego

    @staticmethod
    def backward(ctx, g_mean, g_ego):
        idx, op, num_layers = ctx.idx, ctx.op, ctx.num_layers
        rows, inv = torch.unique(idx, return_inverse=True)  # repeated rows: their gradients add up
        z = g_mean.new_zeros(rows.numel(), g_mean.size(1)).index_add_(0, inv, g_mean / (num_layers + 1))
        # Σ_k Â^k Sᵀz by Horner, t ← Â t + Sᵀz: no whole-table additions, only Sᵀz added on its rows; the
        # first product's input is zero outside those rows (a few % of the graph in a batch), so it reads
        # only the nonzeros whose column is one of them
        if num_layers:
            grad = op.apply_from_rows(z, rows).index_add_(0, rows, z)
            for _ in range(num_layers - 1):
                grad = op.apply_raw(grad).index_add_(0, rows, z)
        else:
            grad = g_mean.new_zeros(ctx.n, g_mean.size(1)).index_add_(0, rows, z)
        if g_ego is not None:
            grad.index_add_(0, idx, g_ego)
        return grad, None, None, None


class NormAdj:
    """The symmetric normalised adjacency D^{-1/2} (A [+ I]) D^{-1/2} of an undirected graph as a CSR operator.

    ``edge_index`` must list every edge in both directions (``RecDataset.bipartite_edge_index`` does);
    ``self_loops=True`` adds I before normalising (the GCN form, degrees counted with the loop). Degrees of
    isolated nodes are 0 and their rows stay zero. ``op(x)`` is differentiable in x.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, self_loops: bool = False):
        row, col = edge_index[0].long(), edge_index[1].long()
        if row.numel():
            fwd = torch.unique(row * num_nodes + col)
            bwd = torch.unique(col * num_nodes + row)
            if fwd.numel() != bwd.numel() or not torch.equal(fwd, bwd):
                raise ConfigError("NormAdj needs an undirected edge_index (every edge in both directions)")
            row, col = fwd // num_nodes, fwd % num_nodes  # deduplicated, sorted by (row, col)
        if self_loops:
            loops = torch.arange(num_nodes)
            code = torch.unique(torch.cat([row * num_nodes + col, loops * num_nodes + loops]))
            row, col = code // num_nodes, code % num_nodes
        deg = torch.bincount(row, minlength=num_nodes).float()
        dis = deg.pow(-0.5).masked_fill_(deg == 0, 0.0)
        self.num_nodes = num_nodes
        self.self_loops = self_loops
        self.row, self.col = row, col
        self.weight = dis[row] * dis[col]
        self.crow = torch.zeros(num_nodes + 1, dtype=torch.long)
        self.crow[1:] = torch.cumsum(torch.bincount(row, minlength=num_nodes), 0)

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    def to(self, device) -> NormAdj:
        for k in ("row", "col", "weight", "crow"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def apply_raw(self, x: Tensor) -> Tensor:
        if self.nnz == 0:
            return torch.zeros_like(x)
        w = self.weight.to(x.dtype)
        return F.embedding_bag(self.col, x, self.crow[:-1], mode="sum", per_sample_weights=w)

    def apply_from_rows(self, values: Tensor, rows: Tensor) -> Tensor:
        """M x for the table x that is ``values`` on the (distinct) ``rows`` and zero elsewhere, at a cost
        proportional to the nonzeros (r, c) with c in rows, not to all of them: the same result as
        :meth:`apply_raw` on that table. Those nonzeros are found with one gather over the columns and kept
        in CSR order, so each row's bag stays contiguous and starts at the count of kept nonzeros before
        the row's first. Not differentiable. (``index_select``, not ``t[i]``: several times faster on CPU.)"""
        out_shape = (self.num_nodes, values.size(1))
        if self.nnz == 0 or rows.numel() == 0:
            return values.new_zeros(out_shape)
        slot = torch.full((self.num_nodes,), -1, dtype=torch.long, device=values.device)
        slot[rows] = torch.arange(rows.numel(), device=values.device)
        col_slot = slot.index_select(0, self.col)
        mask = col_slot >= 0
        keep = mask.nonzero().squeeze(1)
        kept_before = torch.zeros(self.nnz + 1, dtype=torch.long, device=values.device)
        torch.cumsum(mask, 0, out=kept_before[1:])
        offsets = kept_before.index_select(0, self.crow[:-1])
        w = self.weight.index_select(0, keep).to(values.dtype)
        return F.embedding_bag(col_slot.index_select(0, keep), values, offsets, mode="sum", per_sample_weights=w)

    def __call__(self, x: Tensor) -> Tensor:
        return _SymProduct.apply(x, self) if x.requires_grad else self.apply_raw(x)

    def segments(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(col, weight, offsets) of the nonzeros of the rows ``idx`` (in that order): one bag per row."""
        start = self.crow.index_select(0, idx)
        cnt = self.crow.index_select(0, idx + 1) - start
        offsets = torch.cumsum(cnt, 0) - cnt
        # position of the t-th selected nonzero: its row's start + (t − the row's first t)
        nz = torch.repeat_interleave(start - offsets, cnt) + torch.arange(int(cnt.sum()), device=idx.device)
        return self.col.index_select(0, nz), self.weight.index_select(0, nz), offsets

    def rows_raw(self, x: Tensor, idx: Tensor) -> Tensor:
        """(M x)[idx] from the nonzeros of those rows, not differentiable (see :meth:`rows`)."""
        col, w, offsets = self.segments(idx)
        if col.numel() == 0:
            return x.new_zeros(len(idx), x.size(1))
        return F.embedding_bag(col, x, offsets, mode="sum", per_sample_weights=w.to(x.dtype))

    def rows(self, x: Tensor, idx: Tensor) -> Tensor:
        """(M x)[idx] at the cost of the nonzeros of those rows; differentiable in x (backward: a scatter)."""
        return _RowProduct.apply(x, idx, self)

    def dense(self) -> Tensor:
        """The matrix as a dense tensor (tests, small graphs)."""
        m = torch.zeros(self.num_nodes, self.num_nodes)
        m[self.row, self.col] = self.weight
        return m


def layer_mean(x0: Tensor, adj, num_layers: int) -> Tensor:
    """(x0 + Âx0 + ... + Â^L x0) / (L + 1), one product per layer."""
    out, h = x0, x0
    for _ in range(num_layers):
        h = adj(h)
        out = out + h
    return out / (num_layers + 1)


def layer_mean_rows(x0: Tensor, adj: NormAdj, num_layers: int, idx: Tensor) -> tuple[Tensor, Tensor]:
    """(F[idx], x0[idx]) for F = (x0 + Âx0 + ... + Â^L x0) / (L + 1): what a LightGCN training step needs
    (final embeddings of the batch's nodes, and their ego rows for the L2 term). L − 1 products over the
    whole graph and the last on the rows idx only; differentiable in x0 (:class:`_LayerMeanRows`)."""
    return _LayerMeanRows.apply(x0, idx, adj, num_layers)


def layer_rows(x0: Tensor, adj: NormAdj, num_layers: int, idx: Tensor, separate: bool = False) -> list[Tensor]:
    """The layers (Â^k x0)[idx], k = 0..L (``separate=True``), or two terms whose sum is Σ_k (Â^k x0)[idx]:
    (Σ_{k<L} Â^k x0)[idx] and (Â^L x0)[idx]. The first L − 1 products run over the whole graph, the last
    only on the rows ``idx`` (a training step needs the final embeddings of the batch's nodes only); summing
    before selecting rows leaves one row scatter in the backward instead of L."""
    if num_layers == 0:
        return [x0[idx]]
    out, h, acc = [], x0, x0
    for k in range(num_layers):
        if separate:
            out.append(h[idx])
        if k == num_layers - 1:
            break
        h = adj(h)
        if not separate:
            acc = acc + h
    if not separate:
        out.append(acc[idx])
    out.append(adj.rows(h, idx))
    return out


class LightGCN(nn.Module):
    """LightGCN: an ego embedding table E^(0) [U + I, hidden] propagated ``num_layers`` times, layer mean.

    Call :meth:`set_graph` with the training interactions before :meth:`forward`. ``forward()`` returns
    (user table [U, d], item table [I, d]) of final embeddings; the score of (u, i) is their dot product.
    Initialisation N(0, 0.1²), as the reference implementation (LightGCN-PyTorch).
    """

    def __init__(self, num_users: int, num_items: int | None = None, *, hidden: int = 64, num_layers: int = 3,
                 dropout: float = 0.0, out_dim: int | None = None, init_std: float = 0.1):
        super().__init__()
        num_items = num_items if num_items is not None else out_dim
        if num_items is None or num_users < 1 or num_items < 1:
            raise ConfigError(f"LightGCN needs num_users, num_items >= 1, got {num_users}, {num_items}")
        if dropout:
            raise ConfigError(f"LightGCN has no dropout (got --dropout {dropout}); leave it at 0")
        if num_layers < 0 or hidden < 1:
            raise ConfigError(f"LightGCN needs num_layers >= 0 and hidden >= 1, got {num_layers}, {hidden}")
        self.num_users, self.num_items, self.hidden, self.num_layers = num_users, num_items, hidden, num_layers
        self.embedding = nn.Embedding(num_users + num_items, hidden)
        nn.init.normal_(self.embedding.weight, std=init_std)
        self.convs = nn.ModuleList(LGConv(normalize=True) for _ in range(num_layers))  # the reference path
        self.adj: NormAdj | None = None
        self.edge_index: Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    def set_graph(self, edge_index: Tensor) -> LightGCN:
        """Use this undirected user-item graph (users 0..U-1, items U..U+I-1) for propagation."""
        dev = self.embedding.weight.device
        self.edge_index = edge_index.to(dev)
        self.adj = NormAdj(edge_index.cpu(), self.num_nodes).to(dev)
        return self

    def _need_graph(self) -> NormAdj:
        if self.adj is None:
            raise ConfigError("LightGCN.set_graph(edge_index) must be called before forward()")
        return self.adj

    def ego(self) -> Tensor:
        """The table that is propagated (overridden by quantized variants)."""
        return self.embedding.weight

    def propagate(self, x0: Tensor) -> Tensor:
        return layer_mean(x0, self._need_graph(), self.num_layers)

    def propagate_reference(self, x0: Tensor) -> Tensor:
        """The same propagation with PyG ``LGConv`` layers on ``edge_index`` (the specification)."""
        self._need_graph()
        out, h = x0, x0
        for conv in self.convs:
            h = conv(h, self.edge_index)
            out = out + h
        return out / (self.num_layers + 1)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[: self.num_users], x[self.num_users:]

    def forward(self) -> tuple[Tensor, Tensor]:
        return self.split(self.propagate(self.ego()))

    # hooks of the recommendation loop (qgnn.train.rec); quantized variants override them
    num_negatives = 1

    def train_forward(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(ego rows ego()[idx], final embeddings propagate(ego())[idx]) of the nodes ``idx`` for one training
        step; the ego rows get the L2 term. Computed with :func:`layer_mean_rows`."""
        return tuple(reversed(layer_mean_rows(self.ego(), self._need_graph(), self.num_layers, idx)))

    def extra_nodes(self, users: Tensor) -> Tensor | None:
        """Nodes besides the batch's whose final embeddings :meth:`extra_loss` needs ([K, R] or None)."""
        return None

    def extra_loss(self, eu: Tensor, ep: Tensor, en: Tensor, ex: Tensor | None):
        """Method-specific loss terms added to BPR + L2 (none for LightGCN): eu, ep [B, d] user and positive,
        en [B, n, d] negatives, ex [K, R, d] the rows of :meth:`extra_nodes`."""
        return 0.0
