"""Packed low-bit export and the integer inference runtime (``docs/format.md``).

* :mod:`.packing`: ``pack_bits`` / ``unpack_bits`` / ``packed_nbytes``, 1- to 8-bit codes in a fixed,
  documented bit order (LSB first).
* :mod:`.format`: the ``.qgnn.safetensors`` file, ``write_file`` / ``read_file`` (validating, no pickle).
* :mod:`.exporter`: ``export_model`` / ``export_checkpoint`` (fake-quant model -> file).
* :mod:`.intops`: int8 x int8 -> int32 matmul and integer aggregation backends, each beside its reference.
* :mod:`.runtime`: ``IntModel`` / ``load_int_model``, inference on integer codes.
* :mod:`.evaluate`, :mod:`.measure`, :mod:`.cli`: ``qgnn export`` and ``qgnn eval``.
* :mod:`.rec_format`, :mod:`.rec_export`, :mod:`.rec`: LightGCN embedding tables (GNAQ, QAT, LSQ): layout,
  export, and ``RecIntModel`` (decoded table + LightGCN propagation) with its full-ranking evaluation.
"""

from .exporter import export_checkpoint, export_model
from .format import FORMAT, FORMAT_VERSION, read_file, write_file
from .packing import pack_bits, pack_bits_reference, packed_nbytes, unpack_bits, unpack_bits_reference
from .runtime import IntModel, load_int_model

__all__ = ["FORMAT", "FORMAT_VERSION", "IntModel", "export_checkpoint", "export_model", "load_int_model",
           "pack_bits", "pack_bits_reference", "packed_nbytes", "read_file", "unpack_bits",
           "unpack_bits_reference", "write_file"]
