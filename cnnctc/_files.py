"""Small file-system pieces every reader and writer of the package shares.

``open_regular`` opens a file for reading only when it is a regular file, without blocking on a
FIFO or touching a device; ``rename_no_replace`` puts a finished file or folder in place only
where nothing is; ``exclusive_lock`` refuses a second writer of the same output; ``umask_mode``
gives the modes the user's umask gives (for folders made with ``mkdtemp``, which are 0700).
Callers turn the exceptions into their own one-line errors. No MindSpore import here.
"""
import contextlib
import errno
import os
import stat

__all__ = ["NotRegularFile", "open_regular", "file_kind", "rename_no_replace", "rename_folder_no_replace", "exclusive_lock", "Busy",
           "umask_mode"]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISLNK, "a symbolic link"))


_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.EMLINK}


class NotRegularFile(OSError):
    """The path names something other than a regular file; ``kind`` says what (e.g. "a FIFO (named pipe)")."""

    def __init__(self, path, mode):
        self.kind = file_kind(mode)
        self.mode = mode
        super().__init__(f"{self.kind}, not a regular file")
        self.filename = os.fspath(path)

    def __str__(self):
        return f"{self.filename}: {self.kind}, not a regular file"


def file_kind(mode):
    """'a directory', 'a FIFO (named pipe)', ... for a st_mode that is not a regular file's."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path, *, follow_symlinks=True):
    """A binary read-only file object for ``path``, which must be a regular file.

    The name is checked with ``stat`` before it is opened (opening a device can have side
    effects) and the opened file again with ``fstat`` (it may have been replaced meanwhile);
    ``O_NONBLOCK`` makes a FIFO that appears between the two return at once. Raises
    :class:`NotRegularFile`, or the usual OSError (FileNotFoundError, PermissionError, ...);
    an embedded NUL raises ValueError.
    """
    name = os.fspath(path)
    info = os.stat(name) if follow_symlinks else os.lstat(name)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(name, info.st_mode)
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) |
             getattr(os, "O_CLOEXEC", 0) | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0)))
    fd = os.open(name, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(name, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def rename_no_replace(src, dst):
    """Move the file ``src`` to ``dst`` only if nothing is at ``dst``: FileExistsError otherwise.

    A hard link then an unlink, so that the check and the move are one step of the file system
    (``os.rename`` would replace a file, or an empty folder, that appeared meanwhile). Folders
    cannot be hard-linked: for them see :func:`rename_folder_no_replace`.
    """
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # A file system without hard links (FAT, some network mounts): check, then rename.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", os.fspath(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def rename_folder_no_replace(src, dst):
    """Move the folder ``src`` to ``dst`` unless something is there: FileExistsError otherwise.

    ``os.rename`` refuses a non-empty folder and a file at ``dst`` on its own, but replaces an
    empty folder; an empty folder made by someone else is kept by checking right before, the
    one window left being an empty folder made in between (nothing of the user's is lost then).
    """
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "File exists", os.fspath(dst))
    try:
        os.rename(src, dst)
    except OSError as exc:
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", os.fspath(dst)) from exc
        raise


class Busy(Exception):
    """Another process holds the lock."""


def _lock_now(fd, lock_path, wait):
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            if not wait:
                raise Busy(lock_path) from None
            if callable(wait):
                wait()
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise Busy(lock_path) from None
            if callable(wait):
                wait()
            fcntl.flock(fd, fcntl.LOCK_EX)


@contextlib.contextmanager
def exclusive_lock(lock_path, *, remove=False, wait=False):
    """Hold an exclusive lock on ``lock_path`` for the block; yields the locked descriptor.

    ``lock_path`` is a folder (locked itself, nothing is left behind) or a lock file (created if
    needed; with ``remove``, deleted when the block ends). When another process holds it, raise
    :class:`Busy` at once, or with ``wait`` block until it is free (a callable ``wait`` is called
    first, e.g. to say so). The operating system drops the lock when a holder dies. Other OSErrors
    (the path cannot be opened, a file system without locks) are raised as they are."""
    if os.path.isdir(lock_path):
        fd = os.open(lock_path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        remove = False
        try:
            _lock_now(fd, lock_path, wait)
        except BaseException:
            os.close(fd)
            raise
    else:
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) |
                         getattr(os, "O_NOFOLLOW", 0), 0o666)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size:   # a lock file is empty: this one is not ours
                    raise FileExistsError(errno.EEXIST, "it exists and is not a lock file (a file of yours? "
                                          "move it)", os.fspath(lock_path))
                _lock_now(fd, lock_path, wait)
            except BaseException:
                os.close(fd)
                raise
            if not remove:
                break
            # A holder that removes its lock file at the end: whoever locked the removed file sees
            # another inode (or none) at the path now, and tries again.
            try:
                same = os.stat(lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
    try:
        yield fd
    finally:
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
        os.close(fd)


def _current_umask():
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    # No /proc: os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(folder=False):
    """The mode a new folder (0777) or file (0666) gets under the user's umask (e.g. 0755/0644 under 022)."""
    return (0o777 if folder else 0o666) & ~_current_umask()
