"""The optional `deploy` extra (onnx, onnxruntime): imported on first use, with one line when it is missing."""

from __future__ import annotations

from types import ModuleType

from kdlab.errors import KdlabError

INSTALL = "pip install 'kdlab[deploy]'"


def _missing(name: str, what: str) -> None:
    raise KdlabError(f"{what} needs the '{name}' package, which is not installed; run {INSTALL}") from None


def onnx(what: str = "ONNX export") -> ModuleType:
    try:
        import onnx as module
    except ImportError:
        _missing("onnx", what)
    return module


def onnxruntime(what: str = "running ONNX models") -> ModuleType:
    try:
        import onnxruntime as module
    except ImportError:
        _missing("onnxruntime", what)
    return module


def onnx_exporter(what: str = "ONNX export") -> None:
    """torch.onnx.export(dynamo=True) needs onnx and onnxscript."""
    onnx(what)
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        _missing("onnxscript", what)
