"""Runtime ops of layer kinds added beside the built-ins, one file per kind: each registers its per-layer op
(``qgnn.export.runtime.runtime_op``), its packed op (``qgnn.export.packed.packed_op``), its FP32 PyG twin
(``qgnn.export.fp32_reference.fp32_op``) and its spec check (``qgnn.export.format.layer_spec_check``).
Importing this package registers them (``qgnn.export.runtime`` does at import)."""

from . import graphconv  # noqa: F401
