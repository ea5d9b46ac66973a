"""Keep native libraries' own lines off stderr, where the one-line error rule holds.

MindSpore's C++ core prints ``[ERROR] CORE(...)`` for a damaged MindIR, and onnxruntime prints
coloured warnings (and, with an unwritable HOME, a telemetry line) straight to file descriptor 2,
past Python's ``sys.stderr``. While a native call that may do so runs, descriptor 2 points at a
temporary file; what was written there goes to the ``cnnctc`` debug log, and back to stderr when
``CNNCTC_DEBUG=1`` asks for debug output. The same error is raised to the user as one line.
"""
import contextlib
import logging
import os
import sys
import tempfile
import threading

__all__ = ["quiet_native_stderr", "stderr_descriptor"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_saved = None   # the real descriptor 2 while a capture runs


def stderr_descriptor():
    """The descriptor of the real stderr, also while a capture has moved descriptor 2 aside."""
    return _saved if _saved is not None else 2


@contextlib.contextmanager
def quiet_native_stderr():
    """Capture what native code writes to descriptor 2 during the block (see the module docstring)."""
    if os.environ.get("CNNCTC_DEBUG") or not _lock.acquire(blocking=False):
        yield   # debug output asked for, or a nested/concurrent capture already holds descriptor 2
        return
    global _saved
    try:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            _saved = saved
            try:
                yield
            finally:
                _saved = None
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                text = capture.read(1 << 16).decode("utf-8", "replace").strip()
                if text:
                    log.debug("native library output: %s", text)
    finally:
        _lock.release()
