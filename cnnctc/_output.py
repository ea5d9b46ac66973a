"""Putting a command's output file in place without losing or replacing what the user has.

One home for what ``export``, ``quantize`` and the runtime's export cache share:

- :func:`output_lock`: a lock on OUT for the whole run (``.OUT.lock`` beside it), so a second
  writer to the same OUT is refused in one line (or, for the cache, waits) while the first runs;
  a run that takes it first removes the work folders a killed run left beside OUT.
- :func:`work_folder`: a hidden folder beside OUT, on its file system, for the temporary files.
- :func:`put_in_place`: the final rename, re-checked at that moment: without ``overwrite`` a
  no-replace rename (``os.link`` then unlink), so a file that appeared meanwhile is never replaced.
- :func:`refuse_inputs`: OUT (or a sidecar) must not be one of the command's inputs (same path,
  symlink or hard link).
- :func:`disk_full_error`: a full disk is named as such, with the file being written.
No MindSpore import here.
"""
import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ._files import Busy, exclusive_lock, umask_mode
from .errors import CnnctcError, disk_full

__all__ = ["output_lock", "work_folder", "put_in_place", "refuse_inputs", "refuse_existing", "full_disk_named",
           "disk_full_error", "DiskFullError", "free_bytes", "file_mode"]

log = logging.getLogger(__name__)

_WORK_TAG = ".cnnctc-tmp-"   # .OUT.cnnctc-tmp-XXXX: only this command's work folders match it


def file_mode():
    """The mode a new file gets under the user's umask (0644 under umask 022)."""
    return umask_mode()


def _lock_path(out):
    return out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def output_lock(out, *, wait=False, what="writing"):
    """Hold an exclusive lock on ``out`` (a ``.OUT.lock`` file beside it) for the block.

    Another holder makes this raise a one-line CnnctcError, or with ``wait`` block until it is
    done. The lock dies with its process (``flock``), so a killed run never blocks the next; the
    one that takes the lock removes the work folders such a run left.
    """
    out = Path(out)
    lock = _lock_path(out)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(lock, remove=True, wait=wait and (
                lambda: log.info("waiting for another process %s %s", what, out.name))))
        except Busy:
            raise CnnctcError(f"{out}: another cnnctc command is {what} it right now; wait for it to finish, "
                              "or choose another output") from None
        except OSError as exc:
            raise _os_error(exc, lock, f"cannot create the lock file {lock}") from None
        _remove_dead_work(out)
        yield


def _remove_dead_work(out):
    """Work folders of ``out`` left by a killed run (the lock is ours, so no live run owns one)."""
    prefix = f".{out.name}{_WORK_TAG}"
    try:
        names = [name for name in os.listdir(out.parent) if name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        path = out.parent / name
        if path.is_dir() and not path.is_symlink():
            log.info("removing %s, left by an interrupted run", path)
            shutil.rmtree(path, ignore_errors=True)


def work_folder(out):
    """A new hidden folder beside ``out`` for its temporary files (removed by the caller)."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out.name}{_WORK_TAG}", dir=out.parent))
    except OSError as exc:
        raise _os_error(exc, out, f"cannot write beside {out}") from None


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs(out, inputs, what="--out"):
    """Raise unless ``out`` is none of ``inputs`` (same path, a symlink to one, or a hard link)."""
    out = Path(out)
    for source in inputs:
        if source is None:
            continue
        if _same_file(out, source) or os.path.abspath(out) == os.path.abspath(source):
            raise CnnctcError(f"{what} {out} is the input {source}; a command never replaces its own input: "
                              "write to another file")


def refuse_existing(out, overwrite):
    """Raise when ``out`` exists (a dangling symlink too) and ``overwrite`` is not given."""
    if os.path.lexists(out) and not overwrite:
        raise CnnctcError(f"{out} already exists; use --overwrite to replace it")


def put_in_place(tmp, out, overwrite):
    """Rename ``tmp`` to ``out``; without ``overwrite`` never replace a file that is there now."""
    try:
        if overwrite:
            os.replace(tmp, out)
            return
        try:
            os.link(tmp, out)   # fails if ``out`` exists, however recently it appeared
        except FileExistsError:
            raise CnnctcError(f"{out} already exists; use --overwrite to replace it") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # A file system without hard links: the lock on ``out`` keeps cnnctc's writers apart.
            refuse_existing(out, overwrite)
            os.rename(tmp, out)
            return
        os.unlink(tmp)
    except OSError as exc:
        raise _os_error(exc, out, f"cannot write {out}") from None


@contextlib.contextmanager
def full_disk_named(out, folder):
    """Turn any failure in the block into ``disk_full_error(out)`` when the disk is what failed: an
    ENOSPC anywhere in its chain, or no free byte left in ``folder`` (libraries that write a
    truncated file and then fail to read it back, e.g. "Truncated message", say nothing else)."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if disk_full(exc) or free_bytes(folder) == 0:
            raise disk_full_error(out) from None
        raise


class DiskFullError(CnnctcError):
    """A full disk while writing ``path``: a caller that did not get the path from --out (the runtime's
    export cache) catches it and says what moves that path."""

    def __init__(self, message, path):
        super().__init__(message)
        self.path = path


def disk_full_error(out):
    return DiskFullError(f"{out}: the disk is full (no space left on {Path(out).parent} while writing it); "
                         "nothing was written: free some space or choose --out on another disk", out)


def free_bytes(folder):
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _os_error(exc, out, doing):
    if disk_full(exc):
        return disk_full_error(out)
    return CnnctcError(f"{doing}: {exc.strerror or exc}")
