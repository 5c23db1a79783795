"""CPU backends of the runtime's kernels (fbgemm through ``torch.ops.quantized``); each has a plain-torch
reference in :mod:`qgnn.kernels.reference` with the same signature and result."""
