"""headbench: which classification head should sit on your pretrained CNN backbone?

    >>> import headbench as hb
    >>> run = hb.compare("path/to/images", heads=["gap", "flatten"])   # doctest: +SKIP
    >>> model = hb.load_model(run.model_dir())                         # doctest: +SKIP
"""
from __future__ import annotations

from .version import __version__  # noqa: F401
from .errors import HeadbenchError  # noqa: E402
from .heads import HeadSpec, create_head, list_heads, register_head  # noqa: E402
from .backbones import create_backbone, list_backbones  # noqa: E402
from .model import HeadbenchModel, build_model  # noqa: E402
from .export import load_model, predict, save_model  # noqa: E402
from .onnx import export_onnx, predict_onnx  # noqa: E402
from .config import AnalyzeConfig, CompareConfig  # noqa: E402
from .run import Run  # noqa: E402
from .compare import compare  # noqa: E402
from .analyze import analyze  # noqa: E402
from .report import write_report  # noqa: E402

__all__ = ["HeadbenchError", "HeadSpec", "create_head", "list_heads", "register_head",
           "create_backbone", "list_backbones", "HeadbenchModel", "build_model", "load_model",
           "predict", "save_model", "export_onnx", "predict_onnx", "CompareConfig", "AnalyzeConfig",
           "Run", "compare", "analyze", "write_report"]
