"""Files in and out of a fitted model: safe model files, ONNX, and per-image results.

- model files that loading can never make run code (:func:`~skpadim.save`,
  :func:`~skpadim.load`, :func:`file_format`);
- ONNX graphs of a fitted model and a runner for them (:func:`~skpadim.export_onnx`,
  :class:`OnnxModel`);
- what scoring writes for each image: the results table as CSV and JSON Lines
  (:class:`ResultsWriter`), raw maps (:func:`save_map`, :func:`load_map`) and binary masks
  (:func:`save_mask`);

every file written atomically (a temporary file beside the target, then one rename), so a
reader never sees half of one.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "._persistence": ["save", "load", "file_format", "FORMAT_VERSION"],
    "._onnx": ["export_onnx", "OnnxModel"],
    "._results": ["ResultsWriter", "DEFAULT_COLUMNS", "verdict"],
    "._maps": ["save_map", "load_map", "save_mask"],
})

if TYPE_CHECKING:  # what static tools and IDEs see
    from ._maps import load_map, save_map, save_mask
    from ._onnx import OnnxModel, export_onnx
    from ._persistence import FORMAT_VERSION, file_format, load, save
    from ._results import DEFAULT_COLUMNS, ResultsWriter, verdict
