"""headbench: which classification head should sit on your pretrained CNN backbone?

>>> import headbench as hb
>>> model = hb.build_model("resnet50", "gap", num_classes=10, weights="none")  # doctest: +SKIP
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> module that defines it; imported on first use so `import headbench` stays fast.
_API = {
    "HeadbenchError": "errors",
    "build_model": "model", "HeadbenchModel": "model",
    "list_heads": "heads", "create_head": "heads", "HeadSpec": "heads",
    "list_backbones": "backbones", "create_backbone": "backbones",
    "compare": "compare", "CompareResult": "compare",
    "analyze": "analyze",
    "write_report": "report",
    "save_model": "export", "load_model": "export", "predict": "export",
}


def __getattr__(name: str):
    if name in _API:
        module = importlib.import_module(f"headbench.{_API[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'headbench' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_API))
