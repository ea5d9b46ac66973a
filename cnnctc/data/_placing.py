"""Putting a finished LMDB at OUT without ever replacing what the user did not ask to replace.

One writer per OUT: a run works in a hidden folder ``.OUT.<8 characters>.tmp`` beside OUT and
holds an exclusive ``flock`` on it for its whole life (the kernel drops it when the process
dies, even by ``kill -9``). Under a short lock on OUT's parent folder a new run
- refuses OUT while another live run's work folder for it exists,
- removes the work folders of dead runs (their lock is free),
- checks OUT and creates and locks its own work folder;
and when it is done, again under that lock, checks OUT once more and moves the result in place
with an atomic rename that cannot replace (``renameat2`` ``RENAME_NOREPLACE``), or, for
``--overwrite``, swaps it with the old LMDB (``RENAME_EXCHANGE``) and removes the old one.
Folders are made with the modes the user's umask gives (``mkdir``, not ``mkdtemp``).
"""
import contextlib
import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil

from .._files import exclusive_lock
from ..errors import CnnctcError
from ._common import is_lmdb_file, is_lmdb_folder, reason

_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100


def _renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _renameat2()


def _rename(src, dst, flags):
    """renameat2(src, dst, flags); False when the system or file system has no such call."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
        return False
    raise OSError(code, os.strerror(code), os.fspath(dst))


def _inside(path, folder):
    """Whether ``path`` is ``folder`` or lies under it (real paths)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_out(out, overwrite, inputs=(), contains=()):
    """Refuse an OUT that writing an LMDB there could lose user data by replacing.

    ``inputs``: paths OUT may not be or hold; ``contains``: folders OUT may not lie inside of
    when it already exists (an LMDB in IMAGES_DIR is the user's, not ours to replace).
    """
    if not os.path.lexists(out):
        parent = out.parent
        if not parent.is_dir():
            if os.path.lexists(parent):
                raise CnnctcError(f"{out}: {parent} is not a folder; choose another OUT")
            raise CnnctcError(f"{out}: the folder {parent} does not exist; create it first or choose another OUT")
        return
    for given in inputs:
        if given is not None and _inside(given, out):
            how = "is" if os.path.realpath(given) == os.path.realpath(out) else "holds"
            raise CnnctcError(f"{out} {how} the input {given}; refusing to replace it, choose another OUT")
    if not overwrite:
        raise CnnctcError(f"{out} already exists (choose another OUT, or replace it with --overwrite if it is an "
                          "LMDB you no longer need)")
    for folder in contains:
        if folder is not None and _inside(out, folder):
            raise CnnctcError(f"{out} lies inside the input {folder}; refusing to replace it, choose an OUT "
                              "outside it")
    if out.is_symlink():
        raise CnnctcError(f"{out} is a symbolic link; not replaced (remove it or choose another OUT)")
    if out.is_dir():
        try:
            empty = not os.listdir(out)
        except OSError as exc:
            raise CnnctcError(f"{out}: cannot read the folder ({reason(exc, out)})") from None
        if not empty and not is_lmdb_folder(out):
            raise CnnctcError(f"{out} is a folder holding other files, not an LMDB; --overwrite replaces only an "
                              "LMDB (a folder of data.mdb and lock.mdb); choose another OUT")
    elif not is_lmdb_file(out):
        raise CnnctcError(f"{out} exists and is not an LMDB; --overwrite replaces only an LMDB; "
                          "choose another OUT")


@contextlib.contextmanager
def _locked_folder(folder):
    """Hold an exclusive flock on ``folder`` (a short critical section between runs)."""
    with contextlib.ExitStack() as held:
        with contextlib.suppress(OSError):  # an unreadable folder: no lock to take, the atomic renames still hold
            held.enter_context(exclusive_lock(folder, wait=True))
        yield


def _try_lock(path):
    """An fd holding an exclusive flock on the folder ``path``; None when another process holds it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


class OutputSlot:
    """The place a new LMDB is built (``self.env_path``) and, on :meth:`place`, put at ``out``.

    A context manager: on leaving, the work folder is removed whatever happened. The result has
    the form of the LMDB it replaces (a single file stays a file), a folder otherwise.
    """

    def __init__(self, out, *, overwrite=False, inputs=(), contains=()):
        self.out, self.overwrite, self.inputs, self.contains = out, overwrite, inputs, contains
        self.work = None
        self._fd = None

    def _pattern(self):
        # mkdtemp's names (earlier versions) and ours: 8 characters of [a-z0-9_].
        return re.compile(r"^\.%s\.[a-z0-9_]{8}\.tmp(\.old)?$" % re.escape(self.out.name))

    def _clear_dead_runs(self):
        parent, pattern = self.out.parent, self._pattern()
        try:
            names = os.listdir(parent)
        except OSError:
            return
        for name in names:
            if not pattern.match(name):
                continue
            path = parent / name
            try:
                fd = _try_lock(path) if os.path.isdir(path) and not os.path.islink(path) else -1
            except OSError:
                continue
            if fd is None:
                raise CnnctcError(f"{self.out} is being written by another make-lmdb (its work folder {path} is "
                                  "in use); wait for it to finish or choose another OUT")
            try:
                _remove(path)  # a dead run's: it can never finish
            finally:
                if fd >= 0:
                    os.close(fd)

    def __enter__(self):
        parent = self.out.parent
        with _locked_folder(parent):
            check_out(self.out, self.overwrite, self.inputs, self.contains)
            self._clear_dead_runs()
            for _ in range(100):
                work = parent / f".{self.out.name}.{secrets.token_hex(4)}.tmp"
                try:
                    os.mkdir(work)  # 0777 minus the umask, like any folder the user makes
                    break
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise CnnctcError(f"{self.out}: cannot write in {parent} ({reason(exc, parent)})") from None
            self.work = work
            self._fd = _try_lock(work)
        self.file_form = os.path.lexists(self.out) and not os.path.isdir(self.out)
        self.env_path = work / "data" if self.file_form else work
        return self

    def place(self):
        """Move the finished LMDB to OUT, re-checking OUT first; CnnctcError when OUT changed meanwhile."""
        built = self.env_path
        old = None
        with _locked_folder(self.out.parent):
            existed = os.path.lexists(self.out)
            check_out(self.out, self.overwrite, self.inputs, self.contains)
            if existed and self.file_form != (not os.path.isdir(self.out)):
                raise CnnctcError(f"{self.out} changed while the LMDB was written (a file became a folder or the "
                                  "other way round); not replaced, run again")
            try:
                if not existed:
                    if not _rename(built, self.out, _RENAME_NOREPLACE):
                        if os.path.lexists(self.out):
                            raise FileExistsError(errno.EEXIST, "exists", str(self.out))
                        os.rename(built, self.out)
                elif _rename(built, self.out, _RENAME_EXCHANGE):
                    old = built  # the old LMDB is where the new one was
                    if not (is_lmdb_folder(old) or is_lmdb_file(old) or (os.path.isdir(old) and not os.listdir(old))):
                        _rename(built, self.out, _RENAME_EXCHANGE)  # someone put their files there: back
                        raise CnnctcError(f"{self.out} changed while the LMDB was written; not replaced, run again")
                else:
                    old = self.work.with_name(self.work.name + ".old")
                    os.rename(self.out, old)
                    try:
                        os.rename(built, self.out)
                    except BaseException:
                        os.rename(old, self.out)
                        raise
            except FileExistsError:
                raise CnnctcError(f"{self.out} appeared while the LMDB was written (another make-lmdb, or "
                                  "you); not replaced: choose another OUT, or --overwrite") from None
            except OSError as exc:
                raise CnnctcError(f"{self.out}: cannot move the new LMDB into place ({reason(exc, self.out)})") from None
        if old is not None:
            _remove(old)
        with contextlib.suppress(OSError):  # the rename itself survives a power cut
            fd = os.open(self.out.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __exit__(self, *exc):
        if self.work is not None and os.path.lexists(self.work):
            _remove(self.work)
        old = self.work.with_name(self.work.name + ".old") if self.work is not None else None
        if old is not None and os.path.lexists(old):
            _remove(old)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
