"""Signals during long work: SIGTERM stops it like Ctrl-C, and a checkpoint write is never cut in half."""
import contextlib
import signal
import threading

__all__ = ["terminate_as_interrupt", "interrupt_deferred"]


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt():
    """During a run, SIGTERM stops it like Ctrl-C (KeyboardInterrupt between two steps).

    MindSpore answers Ctrl-C with SIGTERM: every graph run installs a SIGINT handler that
    signals the process, which would otherwise die at once, mid-save and without a word.
    """
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def interrupt_deferred():
    """Hold back Ctrl-C and SIGTERM while a checkpoint is written and old ones are pruned; then stop."""
    if not _in_main_thread():
        yield
        return
    received = []
    previous = {number: signal.signal(number, lambda signum, frame: received.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        raise KeyboardInterrupt
