"""Signals during long work: SIGTERM, SIGHUP (a closed terminal) and SIGQUIT (Ctrl-\\) stop it like
Ctrl-C, so that work folders are removed and a checkpoint write is never cut in half."""
import contextlib
import signal
import threading

__all__ = ["terminate_as_interrupt", "interrupt_deferred"]


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# Signals whose default action ends the process without a word; one set to SIG_IGN (nohup's
# SIGHUP) stays ignored.
STOPPING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name))


@contextlib.contextmanager
def terminate_as_interrupt():
    """During a run, SIGTERM, SIGHUP and SIGQUIT stop it like Ctrl-C (KeyboardInterrupt).

    MindSpore answers Ctrl-C with SIGTERM: every graph run installs a SIGINT handler that
    signals the process, which would otherwise die at once, mid-save and without a word.
    Only signals still at their default action are taken over, and given back afterwards.
    """
    if not _in_main_thread():
        yield
        return
    taken = [number for number in STOPPING if signal.getsignal(number) is signal.SIG_DFL]
    for number in taken:
        signal.signal(number, _raise_interrupt)
    try:
        yield
    finally:
        for number in taken:
            signal.signal(number, signal.SIG_DFL)


@contextlib.contextmanager
def interrupt_deferred():
    """Hold back Ctrl-C, SIGTERM, SIGHUP and SIGQUIT while a checkpoint is written and old ones are
    pruned; then stop (ignored signals stay ignored)."""
    if not _in_main_thread():
        yield
        return
    received = []
    previous = {number: signal.signal(number, lambda signum, frame: received.append(signum))
                for number in (signal.SIGINT, *STOPPING) if signal.getsignal(number) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        raise KeyboardInterrupt
