"""The package's one import of MindSpore, with a clear error where it cannot work.

MindSpore 2.8's generated protobuf modules only load under protobuf's pure-Python
implementation, which MindSpore selects when it is imported. If another library (``onnx``,
for one) loaded protobuf's native implementation first, importing MindSpore fails and the
interpreter then aborts at exit; so the import is refused before it is tried.
"""
import sys

from ._signals import interrupt_deferred
from .errors import CnnctcError

__all__ = ["mindspore", "require_mindspore"]


def _protobuf_blocks_mindspore():
    implementation = sys.modules.get("google.protobuf.internal.api_implementation")
    return implementation is not None and implementation.Type() != "python"


def require_mindspore():
    """``import mindspore``, or a one-line CnnctcError that says why it cannot be imported here."""
    if "mindspore" in sys.modules:
        return sys.modules["mindspore"]
    if _protobuf_blocks_mindspore():
        culprit = "onnx" if "onnx" in sys.modules else "another library using protobuf"
        raise CnnctcError(f"MindSpore cannot be imported after {culprit} in one process (protobuf's native "
                          "implementation is already loaded); import cnnctc's MindSpore parts (or mindspore) "
                          "before onnx, or set PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python before starting Python")
    try:
        # Ctrl-C while MindSpore's native libraries initialise aborts the interpreter at exit; it is
        # held until the import is done, then arrives as the usual KeyboardInterrupt.
        with interrupt_deferred():
            import mindspore
    except ModuleNotFoundError as exc:
        raise CnnctcError(f"MindSpore is not installed ({exc}); pip install 'mindspore>=2.7,<2.9' 'numpy<2'") from None
    except ImportError as exc:
        raise CnnctcError(f"MindSpore cannot be loaded ({exc}); check the install with "
                          "python -c 'import mindspore'") from None
    return mindspore


mindspore = require_mindspore()
