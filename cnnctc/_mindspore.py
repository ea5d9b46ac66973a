"""The package's one import of MindSpore, with a clear error where it cannot work.

MindSpore 2.8's generated protobuf modules only load under protobuf's pure-Python
implementation, which MindSpore selects when it is imported. If another library (``onnx``,
for one) loaded protobuf's native implementation first, importing MindSpore fails and the
interpreter then aborts at exit; so the import is refused before it is tried.

Every run of a MindSpore network by cnnctc goes through :func:`network_run`: MindSpore's graph
runs are not thread-safe (two threads running one network end in SIGSEGV), so they take one
process-wide lock; and MindSpore's runtime does not survive a fork (a child forked after a
graph ran in its parent waits forever in its first run), so such a child is refused at once.
"""
import atexit
import contextlib
import gc
import os
import sys
import threading
import weakref

from ._signals import interrupt_deferred
from .errors import CnnctcError

__all__ = ["mindspore", "require_mindspore", "network_run", "refuse_after_fork", "mode_kept", "release_at_exit"]

_run_lock = threading.RLock()   # one MindSpore graph run at a time in this process
_ran_in = None                  # the process (pid) in which cnnctc ran a MindSpore graph


def _new_lock_in_child():
    # A thread of the parent may have held the lock at the fork; that thread does not exist here.
    global _run_lock
    _run_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def refuse_after_fork():
    """A one-line CnnctcError in a process forked after MindSpore ran in its parent (it would hang)."""
    if _ran_in is not None and _ran_in != os.getpid():
        raise CnnctcError(f"MindSpore cannot run in this process: it was forked from process {_ran_in} after "
                          "MindSpore ran there, and MindSpore's runtime does not survive a fork (it would wait "
                          "forever); start the workers with multiprocessing.get_context('spawn') (or "
                          "'forkserver') and create the Recognizer in each, or use runtime='onnxruntime', which "
                          "works in forked children")


@contextlib.contextmanager
def network_run():
    """Around a call that runs (or compiles) a MindSpore graph: refused in a forked child of a process
    where MindSpore ran (:func:`refuse_after_fork`); one such call at a time in the process."""
    global _ran_in
    refuse_after_fork()
    _ran_in = os.getpid()   # before the lock: a fork while another thread runs a graph is refused too
    with _run_lock:
        yield


_held = weakref.WeakSet()   # what holds cnnctc's own MindSpore networks: released at exit
_hook_registered = False


def release_at_exit(holder):
    """Call ``holder.release()`` when the interpreter exits (an atexit hook, registered once), while
    modules are still whole. MindSpore's ``Cell.__del__`` needs the ``weakref`` module, which
    teardown may have emptied by the time a network still alive then is freed: each Cell of it
    would print 'Exception ignored in: Cell.__del__ ... TypeError' (101 lines of tracebacks for
    one CNN-CTC). A released holder refuses to run; ``holder`` is held weakly until then."""
    global _hook_registered
    _held.add(holder)
    if not _hook_registered:
        atexit.register(_release_held)
        _hook_registered = True


def _release_held():
    holders = list(_held)
    _held.clear()
    for holder in holders:
        try:
            holder.release()
        except Exception:  # noqa: BLE001  never an error at exit: the rest is still released
            pass
    if holders:
        gc.collect()   # a network's cells hold one another: freed now, not in teardown


@contextlib.contextmanager
def mode_kept():
    """MindSpore's execution mode (GRAPH_MODE or PYNATIVE_MODE) as the caller set it, again after the
    block: an export compiles in graph mode, and the process that asked for it keeps its own mode."""
    mindspore = require_mindspore()
    mode = mindspore.get_context("mode")
    try:
        yield
    finally:
        if mindspore.get_context("mode") != mode:
            mindspore.set_context(mode=mode)


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
