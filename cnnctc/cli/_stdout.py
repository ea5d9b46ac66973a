"""Writing results to standard output: always valid lines, and an error when they cannot be written."""
import contextlib
import math
import os
import sys

from ..errors import CnnctcError

__all__ = ["printable", "finite", "holds_unicode", "json_line", "write_line", "output_error", "stdout_usable",
           "silence_stdout"]


def printable(name):
    """A file name for one line of output: escaped when it holds a newline, tab or other control."""
    name = os.fspath(name) if not isinstance(name, str) else name
    return name if name.isprintable() else name.encode("unicode_escape", "backslashreplace").decode("ascii")


def finite(path, value):
    if not math.isfinite(value):  # a damaged model: refused, never printed as a reading
        raise CnnctcError(f"{path}: the model gave a non-finite confidence ({value}); its weights are damaged or "
                          "it is not a cnnctc model, so nothing more is printed")
    return value


def holds_unicode(stream):
    """True when ``stream`` can take any text (UTF-8); JSON for another is written with \\u escapes."""
    import codecs
    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "utf-8").name.startswith("utf")
    except LookupError:
        return False


def json_line(path, result, stream=None):
    """One JSON object per line, valid JSON on any stdout: escaped to ASCII where ``stream`` (default:
    stdout) cannot hold the text."""
    import json

    def number(value):  # six significant digits: sequence probabilities can be tiny
        return float(f"{finite(path, value):.6g}")
    record = {"path": path, "text": result.text, "confidence": number(result.confidence),
              "chars": [[c, number(p)] for c, p in result.chars]}
    if result.alternatives:
        record["alternatives"] = [{"text": text, "confidence": number(prob)} for text, prob in result.alternatives]
    if result.greedy is not None:
        record["greedy"] = result.greedy
    # On an ASCII-only stdout (PYTHONIOENCODING=ascii, LANG=C) \u escapes, never backslashreplace's \x.
    return json.dumps(record, ensure_ascii=not holds_unicode(sys.stdout if stream is None else stream),
                      allow_nan=False)


def write_line(bar, line):
    """Write one result line; a stdout that cannot take it (disk full, closed) is an OutputError."""
    try:
        bar.write(line, file=sys.stdout)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise output_error(exc) from None


def output_error(exc):
    from ..errors import OutputError, disk_full, os_reason
    advice = "free space on its disk, or redirect it elsewhere" if disk_full(exc) else \
        "redirect it to a file you can write (or to /dev/null to discard them)"
    return OutputError(f"cannot write the results to standard output: {os_reason(exc)}; {advice}")


def stdout_usable():
    """False when standard output is closed (``>&-``): results could not be written anywhere."""
    if sys.stdout is None:  # Python's view of a descriptor 1 closed before it started
        return False
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # not a file (a test's capture): writing will tell
        return True
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def silence_stdout():
    """Point the stdout descriptor at /dev/null, so that the interpreter's last flush cannot fail loudly."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
