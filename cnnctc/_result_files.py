"""Result files of predict and eval (``--output``, ``--predictions``): written under a hidden
temporary name beside the target and moved into place at the end, so a run that fails or is
killed leaves nothing at the target. Without ``overwrite`` the move is a hard link, which fails
rather than replace a file that appeared meanwhile. A target that is one of the command's
inputs, or lies inside one, is refused; so is a link, a folder or a device. Temporary files of
runs that died (kill -9) are removed by the next run. No MindSpore import here.
"""
import contextlib
import errno
import json
import os
import secrets
import stat
from pathlib import Path

from .errors import CnnctcError

__all__ = ["check_result_path", "ResultFile", "written_by_eval"]


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_input(path, given):
    """Whether writing ``path`` would write over or into the input ``given`` (links followed)."""
    if os.path.isdir(given):
        return _inside(path, given)
    if os.path.realpath(path) == os.path.realpath(given):
        return True
    try:
        return os.path.samefile(path, given)  # a hard link
    except (OSError, ValueError):
        return False


def written_by_eval(path):
    """Whether ``path`` is empty or starts like a predictions file (a JSON line naming a dataset and an index)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 16)
    except OSError:
        return False
    if not first.strip():
        return os.path.getsize(path) == 0
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and {"dataset", "index", "label"} <= row.keys()


def check_result_path(path, overwrite=False, inputs=(), *, noun="predictions file", replaceable=None,
                      option="--overwrite"):
    """Refuse a result file that writing could lose data by (one line saying what to do); returns
    it as a Path. ``inputs``: files and folders it must not be, nor lie inside. ``replaceable``:
    with ``overwrite``, which existing files may be replaced (default: any regular file)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the {noun} must be a file path, not {type(path).__name__}")
    text = os.fspath(path)
    if not text or "\0" in text:
        raise CnnctcError(f"{text!r}: not a valid file name for the {noun}")
    path = Path(text)
    for given in inputs:
        if given is not None and _is_input(path, given):
            inside = os.path.isdir(given) and os.path.realpath(path) != os.path.realpath(given)
            where = "lies inside" if inside else "is"
            raise CnnctcError(f"{path} {where} the input {given}; refusing to write there, choose another {noun}")
    if os.path.lexists(path):
        if path.is_symlink():
            raise CnnctcError(f"{path} is a symbolic link; not replaced (remove it or choose another {noun})")
        if path.is_dir():
            raise CnnctcError(f"{path} is a folder; name the {noun} to write")
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CnnctcError(f"{path} is not a regular file; choose another {noun}")
        if not overwrite:
            raise CnnctcError(f"{path} already exists (choose another {noun}, or replace it with {option})")
        if replaceable is not None and not replaceable[0](path):
            raise CnnctcError(f"{path} is not {replaceable[1]}; {option} replaces only those (choose another "
                              f"{noun})")
    parent = path.parent
    if not parent.is_dir():
        raise CnnctcError(f"{path}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CnnctcError(f"{path}: permission denied (cannot write in {parent})")
    return path


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process, or not a pid we can ask about: leave its file alone
    return True


class ResultFile:
    """Text written to a hidden temporary file beside ``path``: :meth:`open`, :meth:`write` lines,
    then :meth:`commit` (moves it into place) or :meth:`discard`. The checks are
    :func:`check_result_path`'s, made again at the move."""

    encoding = "utf-8"

    def __init__(self, path, overwrite, inputs, *, noun="predictions file", replaceable=None, doing="writing"):
        self.noun, self.replaceable, self.doing = noun, replaceable, doing
        self.path = self._check(path, overwrite, inputs)
        self.inputs = inputs
        self.overwrite = overwrite
        self._tmp = self._file = None

    def _check(self, path, overwrite, inputs):
        return check_result_path(path, overwrite, inputs, noun=self.noun, replaceable=self.replaceable)

    def _error(self, exc, doing="writing"):
        what = self.noun.replace(" file", "")
        if getattr(exc, "errno", None) == errno.ENOSPC:
            return CnnctcError(f"{self.path}: the disk is full ({doing} the {what}); free some space or "
                               f"choose another {self.noun}")
        return CnnctcError(f"{self.path}: {doing} the {what} failed ({exc.strerror or exc})")

    def recheck(self):
        """The target's checks again (a file may have appeared meanwhile): call just before another
        output is committed, so that one is not written when this one could not be."""
        self._check(self.path, self.overwrite, self.inputs)

    def _remove_dead_temporaries(self):
        folder, prefix = self.path.parent, f".{self.path.name}."
        with contextlib.suppress(OSError):
            for entry in os.listdir(folder):
                pid = entry[len(prefix):-len(".tmp")].split(".")[0] if entry.startswith(prefix) else ""
                if entry.endswith(".tmp") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(folder / entry)

    def open(self):
        self._remove_dead_temporaries()
        self._tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode from the umask
        except OSError as exc:
            self._tmp = None
            raise self._error(exc, "creating") from None
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, text):
        try:
            self._file.write(text)
        except OSError as exc:
            raise self._error(exc) from None

    def write_json(self, record):
        self.write(json.dumps(record, ensure_ascii=False) + "\n")

    def commit(self):
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            raise self._error(exc) from None
        finally:
            self._file = None
        if self.overwrite:
            self._check(self.path, True, self.inputs)  # a folder or link may have appeared
            try:
                os.replace(self._tmp, self.path)
            except OSError as exc:
                raise self._error(exc, "moving into place") from None
        else:
            try:
                os.link(self._tmp, self.path)  # never replaces: fails if the file appeared meanwhile
            except FileExistsError:
                raise CnnctcError(f"{self.path} appeared while {self.doing}; not replaced (choose another "
                                  f"{self.noun}, or replace it with --overwrite)") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                    raise self._error(exc, "moving into place") from None
                if os.path.lexists(self.path):  # no hard links here: a plain check, then a rename
                    raise CnnctcError(f"{self.path} appeared while {self.doing}; not replaced") from None
                os.rename(self._tmp, self.path)
                self._tmp = None
                return
            os.unlink(self._tmp)
        self._tmp = None

    def discard(self):
        """Remove what an unfinished run wrote (nothing after commit)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None
