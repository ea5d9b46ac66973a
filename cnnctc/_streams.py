"""Standard streams that may be missing or closed.

A process started with a descriptor closed (``2>&-``, ``>&-``) has ``sys.stderr`` or ``sys.stdout``
set to None, and a stream may be closed while a program runs: neither is a reason to fail. Note
that ``print(..., file=None)`` writes to ``sys.stdout``: a message meant for a missing stderr would
land among the results.
"""
import contextlib
import os
import sys

__all__ = ["is_terminal", "fill_closed_descriptors"]


def is_terminal(stream):
    """True only for an open stream on a terminal; False for None, a closed stream or one without a file."""
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _closed(fd):
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def fill_closed_descriptors():
    """For the command line: point descriptors 0, 1 and 2 that are closed at /dev/null, and give a
    missing ``sys.stderr`` a stream on it.

    Otherwise the next file the command opens takes the closed number, and what native libraries
    write to descriptor 2 (MindSpore's and onnxruntime's lines) would go into that file; and a
    message for a missing stderr would be printed to stdout. What the command says on stderr is
    then discarded, as the closed stderr asked; the exit status still tells. ``sys.stdout`` is left
    as it is: a closed stdout is the command's own error to report.
    """
    for fd in (0, 1, 2):
        if not _closed(fd):
            continue
        with contextlib.suppress(OSError):
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:   # a lower descriptor was free as well, or this one was taken meanwhile
                os.dup2(opened, fd)
                os.close(opened)
    if sys.stderr is None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr = open(2, "w", errors="backslashreplace", closefd=False, buffering=1)
