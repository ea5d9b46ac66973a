"""What reading and writing LMDBs share: recognising an environment on disk, and short reasons."""
import os
import stat

from ..errors import CnnctcError

LMDB_MAGIC = b"\xde\xc0\xef\xbe"  # MDB_meta.mm_magic, little-endian, after the page header
LMDB_FILES = {"data.mdb", "lock.mdb"}


def reason(exc, path=None):
    """An lmdb or OS error as a short reason (without the path lmdb puts in front)."""
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    if path is not None:
        prefix = f"{os.fspath(path)}: "
        text = text[len(prefix):] if text.startswith(prefix) else text
    return text


def data_file(path):
    """The file holding the pages: ``path/data.mdb`` for the folder form, ``path`` itself for the file form."""
    return path / "data.mdb" if path.is_dir() else path


def regular_size(path, what):
    """Size of a regular file; CnnctcError naming ``what`` otherwise (never opens it)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CnnctcError(f"{what}: not an LMDB dataset (no {path.name} in it)") from None
    except OSError as exc:
        raise CnnctcError(f"{what}: cannot read it ({reason(exc, path)})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CnnctcError(f"{what}: not an LMDB dataset ({path} is not a regular file)")
    return info.st_size


def is_lmdb_file(path):
    """Whether a regular file starts with an LMDB meta page (read without blocking)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return False
    return head[16:20] == LMDB_MAGIC or head[12:16] == LMDB_MAGIC


def is_lmdb_folder(path):
    """A folder holding an LMDB environment and nothing else (what write_lmdb makes)."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    return "data.mdb" in names and names <= LMDB_FILES and is_lmdb_file(path / "data.mdb")
