"""Packed low-bit export and the integer inference runtime (``docs/format.md``).

* :mod:`.packing`: ``pack_bits`` / ``unpack_bits`` / ``packed_nbytes``, 1- to 8-bit codes in a fixed,
  documented bit order (LSB first).
* :mod:`.format`: the ``.qgnn.safetensors`` file, ``write_file`` / ``read_file`` (validating, no pickle).
* :mod:`.exporter`: ``export_model`` / ``export_checkpoint`` (fake-quant model -> file).
* :mod:`.runtime`: ``IntModel`` / ``load_int_model``, inference on integer codes; models run on
  :mod:`.packed` (activations as packed 8 / 4 / 2-bit tables of :mod:`.tables`, chunked layer ops of
  :mod:`.packed_ops` on the kernels of :mod:`qgnn.kernels.intops`), else on the per-layer path with
  :mod:`.intops`' backends; :mod:`.ops`: the runtime ops of layer kinds added beside the built-ins (GraphConv).
* :mod:`.prompt_export`, :mod:`.prompt_format`, :mod:`.prompt_ops`: prompted models' prompt tables.
* :mod:`.fp32_reference`: the same weights dequantized in plain PyG FP32 layers (``qgnn eval --fp32-reference``).
* :mod:`.onnx_export` (+ ``onnx_graph`` / ``onnx_quant`` / ``onnx_layers``): ``qgnn export --format onnx``.
* :mod:`.evaluate`, :mod:`.measure`, :mod:`.cli`: ``qgnn export`` and ``qgnn eval``.
* :mod:`.rec_format`, :mod:`.rec_export`, :mod:`.rec` (+ ``rec_table`` / ``rec_rank``): LightGCN embedding
  tables (GNAQ, QAT, LSQ): layout, export, and ``RecIntModel`` (the packed table held; per pass a float
  propagation, then ranking from int8 codes) with its full-ranking evaluation.
"""

from qgnn._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("export_checkpoint", "export_model"), "qgnn.export.exporter"),
    **dict.fromkeys(("FORMAT", "FORMAT_VERSION", "read_file", "write_file"), "qgnn.export.format"),
    **dict.fromkeys(("pack_bits", "pack_bits_reference", "packed_nbytes", "unpack_bits", "unpack_bits_reference"),
                    "qgnn.export.packing"),
    **dict.fromkeys(("IntModel", "load_int_model"), "qgnn.export.runtime"),
}

__all__ = ["FORMAT", "FORMAT_VERSION", "IntModel", "export_checkpoint", "export_model", "load_int_model",
           "pack_bits", "pack_bits_reference", "packed_nbytes", "read_file", "unpack_bits",
           "unpack_bits_reference", "write_file"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
