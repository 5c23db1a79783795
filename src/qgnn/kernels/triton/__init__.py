"""Triton kernels (optional extra ``qgnn[triton]``). Nothing in this package is imported by ``import qgnn``
or ``import qgnn.kernels``: the dispatcher (:mod:`qgnn.kernels.lorap`) imports a kernel module on first use.
"""
