"""Errors the package raises for conditions a user can act on (the CLI prints them on one line),
and the wording of operating-system errors as what happened, where, and what to do."""
import errno
import os


class CnnctcError(Exception):
    """Base class: a problem with the user's input, files or network, not a bug."""


class ManifestError(CnnctcError):
    """The manifest is missing, unreadable or incomplete."""


class DownloadError(CnnctcError):
    """The asset could not be fetched."""


class OfflineError(DownloadError):
    """Offline mode is on and the verified asset is not in the cache."""


class IntegrityError(CnnctcError):
    """A file's SHA-256 differs from the one the manifest names."""


class CheckpointError(CnnctcError):
    """A checkpoint is missing, unreadable, or does not fit the network."""


class OutputError(CnnctcError):
    """The results could not be written (standard output closed, the disk full)."""


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def disk_full(exc):
    """True when ``exc``, or anything it was raised from, means no space is left: ENOSPC or a quota
    (EDQUOT), or a library's own words for them."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in _DISK_FULL:
            return True
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def os_reason(exc):
    """'Permission denied' and the like, without Python's [Errno N] preamble; a full disk says so."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return reason + " (the disk is full)" if disk_full(exc) else reason


def os_error_line(exc):
    """An OSError as one line: the file it concerns, what happened, and what to do."""
    name = getattr(exc, "filename", None)
    where = ""
    if name is not None:
        shown = os.fsdecode(name)
        where = (shown if shown.isprintable() else shown.encode("unicode_escape", "backslashreplace").decode()) + ": "
    if disk_full(exc):
        advice = "free space on that disk, or write somewhere else"
    elif isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        advice = "check its permissions, or choose a place you can write"
    else:
        advice = "check the path and the disk, then run again"
    return f"{where}{os_reason(exc)}; {advice}"


SHOWN_SYMBOLS = 40   # symbols of a user's value an error line shows
SHOWN_NAMES = 3      # paths of a list an error line shows


def shown(value, limit=SHOWN_SYMBOLS):
    """A user's value as an error line quotes it: ``repr`` of a string (control characters escaped), cut
    after ``limit`` symbols with how long it is ("'0123...'... (5,000 symbols)"); any other value by
    its repr, cut the same way ("(... characters)"). An alphabet of 5000 symbols, a word or a
    label of any length thus costs one short line."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value):,} symbols)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown_list(names, limit=SHOWN_NAMES):
    """Paths or names joined for an error line: the first ``limit``, then how many more there are."""
    names = [os.fsdecode(n) if isinstance(n, (bytes, os.PathLike)) else str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit:,} more"
