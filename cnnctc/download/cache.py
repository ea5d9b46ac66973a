"""The cache's layout and its verified stamps: how an asset's file is named and read, what is kept
beside it (its ``.verified`` stamp, the ``.lock`` of the process that downloads it, a ``.part``
file while it downloads), and its SHA-256, hashed once and trusted while the file is unchanged.
Only regular files are ever opened for reading, so a FIFO never blocks.
"""
import contextlib
import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .._files import NotRegularFile, exclusive_lock, file_kind, open_regular
from ..errors import CnnctcError, DownloadError, IntegrityError
from ..errors import os_reason as _os_reason
from ..registry import bundled_asset
from .urls import HEX64, show

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20            # hashing files
MAX_FILE_NAME = 120             # characters of a cache file name taken from a URL
# Files the cache keeps beside an asset; an asset must never be named like one of them.
_SIDE_SUFFIXES = (".part", ".part.json", ".lock", ".verified", ".tmp")
# Said of a folder (or FIFO...) named as a checkpoint: the user's own folder is never to be removed.
_NAME_THE_FILE = "name the file itself (if it stands where the cache keeps a file, move it away)"


# --- reading files ---------------------------------------------------------------------------

def open_file(path, *, follow_symlinks=True):
    """A read-only file object for ``path``, which must be a regular file (a FIFO never blocks)."""
    try:
        return open_regular(path, follow_symlinks=follow_symlinks)
    except NotRegularFile as exc:
        raise CnnctcError(f"{path}: {exc.kind}, not a file; {_NAME_THE_FILE}") from None
    except FileNotFoundError:
        raise CnnctcError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        reason = _os_reason(exc) if isinstance(exc, OSError) else "not a valid file name"
        raise CnnctcError(f"{path}: cannot read it: {reason}") from None


def read_small(path):
    """The text of a small side file (stamp, resume record), or None when it cannot be read."""
    try:
        with open_file(path) as f:
            return f.read(1 << 16).decode("utf-8")
    except (CnnctcError, OSError, UnicodeDecodeError):
        return None


def sha256_file(path, chunk_size=CHUNK_SIZE):
    """SHA-256 of a regular file, read in constant memory; CnnctcError names a file it cannot read."""
    digest = hashlib.sha256()
    with open_file(path) as f:
        try:
            for block in iter(lambda: f.read(chunk_size), b""):
                digest.update(block)
        except OSError as exc:
            raise CnnctcError(f"{path}: cannot read it: {_os_reason(exc)}") from None
    return digest.hexdigest()


# --- verified-file stamps ------------------------------------------------------------------
# Hashing 675 MiB takes seconds; a stamp beside the file records the hash together with the
# file's identity (size, mtime, ctime, inode). ctime cannot be set back by user code, so any
# write to the file forces a re-hash.

def stamp_path(path):
    return path.with_name(path.name + ".verified")


def identity(st):
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def read_stamp(path):
    text = read_small(stamp_path(path))
    try:
        stamp = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(path, sha256, st):
    stamp = dict(identity(st), sha256=sha256)
    tmp = stamp_path(path).with_name(stamp_path(path).name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, stamp_path(path))
    except OSError as exc:  # a read-only cache still works, it just re-hashes every time
        log.debug("cannot write %s: %s", stamp_path(path), exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _stat(path):
    try:
        return os.stat(path)
    except FileNotFoundError:  # a dangling symlink too
        raise CnnctcError(f"{path}: no such file") from None
    except OSError as exc:
        raise CnnctcError(f"{path}: cannot read it: {_os_reason(exc)}") from None


def file_sha256(path):
    """SHA-256 of ``path``, taken from its stamp when the file has not changed since it was hashed."""
    path = Path(path)
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise CnnctcError(f"{path}: {file_kind(st.st_mode)}, not a file; {_NAME_THE_FILE}")
    stamp = read_stamp(path)
    if stamp and stamp.get("sha256") and {k: stamp.get(k) for k in identity(st)} == identity(st):
        return stamp["sha256"]
    actual = sha256_file(path)
    with contextlib.suppress(OSError):
        if os.stat(path).st_mtime_ns == st.st_mtime_ns:  # not written to while we read it
            write_stamp(path, actual, st)
    return actual


def present(path):
    """True when ``path`` names something (a dangling symlink counts as missing)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # there, but not reachable: let the reader name the reason
    return True


def mismatch(path, expected, actual):
    return IntegrityError(
        f"{path}: SHA-256 mismatch (expected {expected}, got {actual}); the file is corrupt or not the "
        f"asset the manifest names. It was not loaded. Delete it and download again "
        f"(`cnnctc download --force`), or point CNNCTC_MANIFEST at a manifest that names it.")


def verify_file(path, expected):
    """Raise :class:`IntegrityError` unless ``path`` hashes to ``expected``; returns the path.

    A file that exists but cannot be read (a directory, a FIFO, no permission) raises
    :class:`~cnnctc.errors.CnnctcError` naming it and the reason.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"verify_file: path must be a file path (str or os.PathLike), got {type(path).__name__}")
    if not isinstance(expected, str):
        raise TypeError(f"verify_file: expected must be the SHA-256 as 64 hexadecimal digits (a str), got "
                        f"{type(expected).__name__}")
    if not HEX64.match(expected.strip().lower()):
        raise ValueError(f"verify_file: expected must be 64 hexadecimal digits (as `sha256sum` prints them), got "
                         f"{show(expected, 70)!r}")
    path = Path(path)
    if not present(path):
        raise IntegrityError(f"{path}: no such file")
    actual = file_sha256(path)
    if actual != expected.strip().lower():
        raise mismatch(path, expected, actual)
    return path


def verified_bundled(manifest):
    """The verified weights shipped inside the package for ``manifest``, or None when it names none."""
    path = bundled_asset(manifest)
    if path is None:
        return None
    actual = sha256_file(path) if present(path) else None  # a few MB: hashed on every use, no stamp
    if actual != manifest.sha256:
        raise IntegrityError(f"{path}: the model {manifest.uid} shipped with cnnctc is "
                             f"{'missing' if actual is None else 'damaged (SHA-256 ' + actual + ')'}; "
                             "reinstall the package (pip install --force-reinstall cnnctc)")
    return path


def check_cached(manifest, cache_dir=None):
    """The state of the manifest's asset: 'missing', 'verified' or 'corrupt' in the cache; for a
    model shipped inside the package, 'bundled' (verified), 'missing' or 'corrupt'.

    Raises :class:`~cnnctc.errors.CnnctcError` when something is at the cache path that cannot
    be read as a file (a directory, a FIFO, no permission).
    """
    bundled = bundled_asset(manifest)
    if bundled is not None:
        if not present(bundled):
            return "missing"
        return "bundled" if sha256_file(bundled) == manifest.sha256 else "corrupt"
    path = manifest.cache_path(cache_dir)
    if not present(path):
        return "missing"
    return "verified" if file_sha256(path) == manifest.sha256 else "corrupt"


# --- the cache's file names and its lock ---------------------------------------------------------

def file_name_for_url(url, sha256):
    """A safe cache file name for ``url``: the last part of its path, percent-decoded.

    Never the query or fragment; only letters, digits, '.', '_' and '-' (others become '_'),
    starting with a letter or digit, at most :data:`MAX_FILE_NAME` characters, and never one
    of the names the cache keeps beside an asset. Falls back to ``<sha256[:16]>.ckpt``.
    """
    last = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", last)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)
    if len(name) > MAX_FILE_NAME:
        stem, dot, suffix = name.rpartition(".")
        if dot and stem and len(suffix) <= 16:
            name = stem[:MAX_FILE_NAME - len(suffix) - 1] + "." + suffix
        else:
            name = name[:MAX_FILE_NAME]
    if not name or name.lower().endswith(_SIDE_SUFFIXES):
        name = f"{sha256[:16]}.ckpt"
    return name


def cache_error(root, exc):
    root = Path(root)
    if root.exists() and not root.is_dir():
        reason = "it is a file, not a folder"
    else:
        reason = _os_reason(exc)
        if exc.filename and os.fspath(exc.filename) != os.fspath(root):
            reason += f" ({exc.filename})"
    return DownloadError(f"cannot write to the cache {root}: {reason}; set CNNCTC_CACHE_DIR or --cache-dir "
                         "to a writable folder")


@contextlib.contextmanager
def locked(lock_path):
    """An exclusive lock across processes; the OS drops it when a holder dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path, wait=lambda: log.info("waiting for another process to finish downloading %s",
                                                         lock_path.name[:-5])):
        yield
