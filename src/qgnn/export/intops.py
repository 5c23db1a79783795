"""Integer operators of the runtime: int8 x int8 -> int32 matrix products and the integer neighbourhood sum
over a fixed graph, each with a plain reference and faster backends that must equal it bit for bit.

**Linear.** With activation codes ``a`` ([N, K], zero-point ``z_a`` per tensor or per row) and weight codes
``w`` ([O, K], zero-point ``z_w`` per tensor or per output channel), both int8, Jacob et al. (CVPR 2018,
eq. 7) expand the centred product so that the inner loop multiplies raw int8 codes::

    acc[n, o] = Σ_k (a_nk − z_a)(w_ok − z_w)
              = Σ_k a_nk w_ok − z_a Σ_k w_ok − z_w Σ_k a_nk + K z_a z_w          (int32)

Backends for ``Σ_k a_nk w_ok`` (:func:`int8_matmul`):

* ``"reference"``: int64 ``matmul``, the specification;
* ``"int_mm"``: ``torch._int_mm`` (int8 x int8 -> int32; on CPU it accepts every shape in torch 2.13, on
  CUDA it needs M > 16 and K, N multiples of 8, else the reference runs);
* ``"float"``: float32 GEMM on the int8 values, split along K into blocks of at most 1024. Every product is
  an integer of magnitude <= 128 · 128 = 2^14, so every partial sum of a block is an integer of magnitude
  <= 2^24, which float32 represents exactly whatever the summation order: each block is *exactly* the
  integer result (then summed in int32). Only valid at full float32 matmul precision
  (``torch.get_float32_matmul_precision() == "highest"``; "high" / "medium" allow TF32 / bf16), which
  ``"auto"`` checks. The per-layer path's CPU default. (``torch._int_mm`` is not "~20x slower than sgemm"
  on this project's machine; the packed executor, :mod:`qgnn.export.packed`, runs fbgemm's quantized linear
  and ``_int_mm`` through :mod:`qgnn.kernels.intops`, whose docstring gives their measured times.)

``"auto"`` (default): ``"int_mm"`` on CUDA where its shape rules hold, ``"float"`` on CPU at highest
precision, else ``"int_mm"``.

**Aggregation.** :class:`GraphPlan` holds one graph (sources, targets, in-degrees, a CSR ordering) and
:meth:`GraphPlan.accumulate` computes ``acc[i, c] = Σ_{j→i} e_ji · xc[j, c]`` for integer (already centred)
node values ``xc`` and edge values ``e`` (None: 0/1 adjacency), MixQ-GNN's Theorem 1 sum. Backends:
``"reference"`` is :func:`qgnn.kernels.integer_accumulate` (gather + ``index_add_``, the kernel
specification); ``"scipy"`` a CSR x dense product on int32 / int64 in ``scipy.sparse`` (compiled
sparsetools, no [E, C] message tensor); ``"float_csr"`` torch's float32 CSR x dense product, exact
because it is used only when the bound below is <= 2^24 (every partial sum is then an integer float32
holds exactly). ``"auto"``: ``float_csr`` when the bound allows, else ``scipy``. The accumulator is int32
when the exact bound ``B = max_i Σ_j |e_ji| · max |xc|`` fits, int64 otherwise (the reference's rule), so
it never wraps. All backends return the same integers (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qgnn.errors import ConfigError
from qgnn.kernels import FLOAT_EXACT, INT32_MAX, integer_accumulate
from qgnn.kernels.intops import float_exact_mm

__all__ = ["GEMM_BACKENDS", "AGG_BACKENDS", "int8_matmul", "int_linear", "centred_matmul_float", "GraphPlan",
           "scipy_available"]

GEMM_BACKENDS = ("auto", "reference", "int_mm", "float")
AGG_BACKENDS = ("auto", "reference", "scipy", "float_csr")
_FLOAT_BLOCK = 1024  # 1024 · 2^14 = 2^24: the largest K whose int8 dot products float32 holds exactly


def scipy_available() -> tuple[bool, str]:
    try:
        import scipy.sparse  # noqa: F401
    except Exception as e:  # pragma: no cover - scipy is a dependency; kept for a clean fallback
        return False, f"scipy.sparse unavailable ({e.__class__.__name__}: {e})"
    return True, "scipy.sparse CSR x dense (compiled)"


def _check_backend(name: str, valid: tuple[str, ...], what: str) -> str:
    if name not in valid:
        raise ConfigError(f"unknown {what} backend {name!r}; valid: {', '.join(valid)}")
    return name


def resolve_gemm(backend: str, device: torch.device, m: int, k: int, n: int) -> str:
    backend = _check_backend(backend, GEMM_BACKENDS, "matmul")
    cuda = device.type == "cuda"
    int_mm_ok = not cuda or (m > 16 and k % 8 == 0 and n % 8 == 0)
    if backend == "auto":
        if cuda:
            return "int_mm" if int_mm_ok else "reference"
        return "float" if torch.get_float32_matmul_precision() == "highest" else "int_mm"
    if backend == "int_mm" and not int_mm_ok:
        return "reference"
    if backend == "float" and torch.get_float32_matmul_precision() != "highest":
        raise ConfigError("the 'float' matmul backend is exact only at torch.set_float32_matmul_precision('highest')")
    return backend


def int8_matmul(a: Tensor, w: Tensor, backend: str = "auto") -> Tensor:
    """``a @ w.T`` for int8 ``a`` [N, K] and int8 ``w`` [O, K], exact, as int32 [N, O]."""
    if a.dtype != torch.int8 or w.dtype != torch.int8 or a.dim() != 2 or w.dim() != 2 or a.size(1) != w.size(1):
        raise ConfigError(f"int8_matmul needs int8 [N, K] and [O, K], got {a.dtype} {tuple(a.shape)} and "
                          f"{w.dtype} {tuple(w.shape)}")
    n, k = a.shape
    o = w.size(0)
    if k * 128 * 128 > INT32_MAX:
        raise ConfigError(f"K = {k} input channels can overflow an int32 accumulator of int8 products")
    if n == 0 or o == 0 or k == 0:
        return torch.zeros((n, o), dtype=torch.int32, device=a.device)
    backend = resolve_gemm(backend, a.device, n, k, o)
    if backend == "reference":
        return (a.to(torch.int64) @ w.to(torch.int64).t()).to(torch.int32)
    if backend == "int_mm":
        return torch._int_mm(a.contiguous(), w.t().contiguous())
    af, wf = a.to(torch.float32), w.to(torch.float32).t()
    acc = None
    for start in range(0, k, _FLOAT_BLOCK):
        part = (af[:, start:start + _FLOAT_BLOCK] @ wf[start:start + _FLOAT_BLOCK]).to(torch.int32)
        acc = part if acc is None else acc.add_(part)
    return acc


def int_linear(a: Tensor, z_a: Tensor | None, w: Tensor, z_w: Tensor | None, w_rowsum: Tensor | None = None,
               backend: str = "auto") -> Tensor:
    """``acc[n, o] = Σ_k (a_nk − z_a)(w_ok − z_w)`` in int32 (module docstring).

    ``z_a``: None, a 0-d / [1] integer tensor (per tensor) or [N, 1] (per row); ``z_w``: None, per tensor or
    [O] (per output channel); ``w_rowsum``: precomputed ``Σ_k w_ok`` (int32 [O]), optional."""
    acc = int8_matmul(a, w, backend)
    k = a.size(1)
    za = None if z_a is None else z_a.to(torch.int32).reshape(-1, 1) if z_a.numel() > 1 else z_a.to(torch.int32)
    zw = None if z_w is None else z_w.to(torch.int32).reshape(1, -1) if z_w.numel() > 1 else z_w.to(torch.int32)
    if za is not None and bool((za != 0).any()):
        rs = w.to(torch.int32).sum(1) if w_rowsum is None else w_rowsum
        acc -= za.reshape(-1, 1) * rs.view(1, -1) if za.numel() > 1 else za.reshape(()) * rs.view(1, -1)
    if zw is not None and bool((zw != 0).any()):
        acc -= a.to(torch.int32).sum(1, keepdim=True) * zw.reshape(1, -1)
        if za is not None:
            acc += k * za.reshape(-1, 1) * zw.reshape(1, -1)
    return acc


CENTRED_BLOCK = FLOAT_EXACT // (255 * 255)  # 258: K block whose centred int8-grid dot products float32 holds


def centred_matmul_float(ac: Tensor, wc_t: Tensor) -> Tensor:
    """``acc[n, o] = Σ_k ac_nk · wc_t[k, o]`` for *centred* codes held as float32 integers
    (``ac = q_a − z_a``, ``wc_t = (q_w − z_w)ᵀ``, both of magnitude <= 255 on an int8 grid), exact, as
    float32 integers (int32's values when they fit 2^24, else float32's rounding of them).

    The zero-point expansion of :func:`int_linear` needs four int32 passes over [N, O] / [N, K]; on
    centred values one float GEMM per K block of CENTRED_BLOCK does it all: every product has
    magnitude <= 255² < 2^16 and every partial sum of a block <= 2^24, which float32 represents exactly
    in any summation order, so each block *is* the integer sum (blocks are added in float64, exact to
    2^53). The runtime's CPU path for narrow layers (GIN's 64-wide MLPs), where the elementwise passes,
    not the GEMM, dominate."""
    if ac.dim() != 2 or wc_t.dim() != 2 or ac.size(1) != wc_t.size(0):
        raise ConfigError(f"centred_matmul_float needs [N, K] and [K, O], got {tuple(ac.shape)} and "
                          f"{tuple(wc_t.shape)}")
    return float_exact_mm(ac, wc_t, 255 * 255)  # blocks of CENTRED_BLOCK columns


class GraphPlan:
    """One graph prepared for integer aggregation: ``src`` (rows of the values a message reads), ``dst``
    (targets ``< num_nodes``), in-degrees, and the CSR order of the edges (sorted by target, stable)."""

    def __init__(self, src: Tensor, dst: Tensor, num_nodes: int, num_src: int | None = None):
        self.src, self.dst = src.long(), dst.long()
        self.num_nodes = int(num_nodes)
        self.num_src = self.num_nodes if num_src is None else int(num_src)
        self.num_edges = int(self.src.numel())
        self.deg = torch.bincount(self.dst, minlength=self.num_nodes)
        self._csr = None
        self._ones: dict = {}  # unweighted CSR values per dtype, built once

    def csr(self):
        """(edge order, indptr, indices) of the CSR form, built once per graph; int32 indices when they fit
        (scipy's own index dtype, so it copies nothing per call)."""
        if self._csr is None:
            order = torch.argsort(self.dst, stable=True)
            indptr = torch.zeros(self.num_nodes + 1, dtype=torch.int64)
            indptr[1:] = torch.cumsum(self.deg, 0)
            idx = "int32" if max(self.num_edges, self.num_src) < INT32_MAX else "int64"
            self._csr = (order, indptr.numpy().astype(idx), self.src[order].numpy().astype(idx))
        return self._csr

    def edge_index(self) -> Tensor:
        return torch.stack([self.src, self.dst])

    def accumulate(self, xc: Tensor, e: Tensor | None = None, backend: str = "auto") -> Tensor:
        """``acc[i, c] = Σ_{j→i} e_ji · xc[j, c]`` (e None: every factor 1), exact, int32 or int64 [N, C]."""
        backend = _check_backend(backend, AGG_BACKENDS, "aggregation")
        if backend in ("auto", "float_csr"):
            if xc.dim() == 2 and xc.size(0) == self.num_src and self._bound(xc, e) <= FLOAT_EXACT:
                return self._float_csr(xc, e)
            backend = "scipy" if scipy_available()[0] and xc.device.type == "cpu" else "reference"
        if backend == "reference":
            return integer_accumulate(xc, None, self.edge_index(), self.num_nodes, e, None)
        return self._scipy(xc, e)

    def _float_csr(self, xc: Tensor, e: Tensor | None) -> Tensor:
        """torch's float32 CSR x dense product on the integer values: when no partial sum can exceed
        2^24 in magnitude (the exact bound of the module docstring), every partial sum is an integer float32
        represents exactly, in any summation order, so the result *is* the integer sum (returned as
        int32); the caller checked the bound. The fastest exact path on CPU (MKL's sparse kernels)."""
        import warnings

        order, _, _ = self.csr()
        if self.num_edges == 0 or xc.size(1) == 0:
            return torch.zeros((self.num_nodes, xc.size(1)), dtype=torch.int32, device=xc.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            if e is None:
                adj = self._ones.get("csr_float")
                if adj is None:
                    adj = self._ones["csr_float"] = self._torch_csr(torch.ones(self.num_edges))
            else:
                adj = self._torch_csr(e.index_select(0, order).to(torch.float32))
            return (adj @ xc.to(torch.float32)).to(torch.int32)

    def _torch_csr(self, values: Tensor) -> Tensor:
        _, indptr, indices = self.csr()
        if "ptr" not in self._ones:
            self._ones["ptr"] = (torch.from_numpy(indptr).long(), torch.from_numpy(indices).long())
        crow, col = self._ones["ptr"]
        return torch.sparse_csr_tensor(crow, col, values, (self.num_nodes, self.num_src), check_invariants=False)

    def _bound(self, xc: Tensor, e: Tensor | None) -> int:
        if self.num_edges == 0 or xc.numel() == 0:
            return 0
        max_x = int(xc.abs().max())
        if e is None:
            return int(self.deg.max()) * max_x
        wdeg = torch.zeros(self.num_nodes, dtype=torch.int64).index_add_(0, self.dst, e.to(torch.int64).abs())
        return int(wdeg.max()) * max_x

    def _scipy(self, xc: Tensor, e: Tensor | None) -> Tensor:
        import numpy as np
        import scipy.sparse as sp

        if xc.dim() != 2 or xc.size(0) != self.num_src:
            raise ConfigError(f"values must be [{self.num_src}, C], got {tuple(xc.shape)}")
        dtype = torch.int32 if self._bound(xc, e) <= INT32_MAX else torch.int64
        if self.num_edges == 0 or xc.size(1) == 0:
            return torch.zeros((self.num_nodes, xc.size(1)), dtype=dtype)
        order, indptr, indices = self.csr()
        npd = np.int32 if dtype == torch.int32 else np.int64
        if e is None:
            data = self._ones.get(npd)
            if data is None:
                data = self._ones[npd] = np.ones(self.num_edges, dtype=npd)
        else:
            data = e.index_select(0, order).numpy().astype(npd, copy=False)
        adj = sp.csr_matrix((data, indices, indptr), shape=(self.num_nodes, self.num_src), copy=False)
        out = adj @ np.ascontiguousarray(xc.numpy().astype(npd, copy=False))
        return torch.from_numpy(np.ascontiguousarray(out))
