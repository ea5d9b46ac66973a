"""Signals during long work: SIGTERM, SIGHUP (a closed terminal) and SIGQUIT (Ctrl-\\) stop it like
Ctrl-C, so that work folders are removed and a checkpoint write is never cut in half."""
import contextlib
import signal
import threading

__all__ = ["terminate_as_interrupt", "interrupt_deferred", "interrupt_kept", "graph_call", "was_stopped"]

_stopped = []   # stopping signals terminate_as_interrupt turned into KeyboardInterrupt in this process


def was_stopped():
    """Whether a stopping signal reached this process's command (what fails after it, such as an
    import cut short, fails because of it)."""
    return bool(_stopped)


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


# Signals whose default action ends the process without a word; one set to SIG_IGN (nohup's
# SIGHUP) stays ignored.
STOPPING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name))


@contextlib.contextmanager
def terminate_as_interrupt(on_repeat=None):
    """During a run, SIGTERM, SIGHUP and SIGQUIT stop it like Ctrl-C (KeyboardInterrupt).

    MindSpore answers Ctrl-C with SIGTERM: every graph run installs a SIGINT handler that
    signals the process, which would otherwise die at once, mid-save and without a word.
    Only signals still at their default action are taken over, and given back afterwards.
    With ``on_repeat`` (the command line's), Ctrl-C is taken over too, and a second stopping
    signal while the first one's clean-up runs calls ``on_repeat()`` instead of interrupting it.
    """
    if not _in_main_thread():
        yield
        return
    taken = [number for number in STOPPING if signal.getsignal(number) is signal.SIG_DFL]
    if on_repeat is not None and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        taken.append(signal.SIGINT)
    received = []

    def stop(signum, frame):
        received.append(signum)
        _stopped.append(signum)
        if on_repeat is not None and len(received) > 1:
            on_repeat()
        raise KeyboardInterrupt

    for number in taken:
        signal.signal(number, stop)
    try:
        yield
    finally:
        for number in taken:
            signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)


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


@contextlib.contextmanager
def interrupt_kept():
    """Around a call that may swallow a KeyboardInterrupt (MindSpore's graph compile calls back into
    Python and, now and then, carries on when Ctrl-C lands in such a callback): a stopping signal
    that arrived during the call raises KeyboardInterrupt once it returns."""
    if not _in_main_thread():
        yield
        return
    received = []
    previous = {}
    for number in (signal.SIGINT, *STOPPING):
        handler = signal.getsignal(number)
        if callable(handler):
            def noticing(signum, frame, handler=handler):
                received.append(signum)
                handler(signum, frame)
            previous[number] = signal.signal(number, noticing)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def graph_call():
    """Around a MindSpore call that may compile a graph: a Ctrl-C is kept (:func:`interrupt_kept`) and
    what MindSpore prints of it (its trace, an IR dump's name) stays off stderr."""
    from ._native import quiet_native_stderr
    with interrupt_kept(), quiet_native_stderr():
        yield
