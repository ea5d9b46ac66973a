"""Fetch, verify and cache checkpoint assets.

Guarantees (see docs/downloads.md): the file at the final cache path only ever appears by an atomic
rename after its SHA-256 matched; a cached file is re-verified before use whenever its size,
mtime, ctime or inode changed since it was last hashed; interrupted downloads resume from a
``.part`` file; one process downloads while the others wait on a lock beside the target.
Every failure is a :class:`~cnnctc.errors.CnnctcError` with a one-line message: a bad URL or
SHA-256 is refused before any network access, a host name that does not resolve fails at once,
and a download that cannot reach its server names the ways to work offline or from a mirror.
Only regular files are ever opened for reading, so a FIFO never blocks.
No MindSpore import here, so ``cnnctc verify`` and ``cnnctc download`` start fast.
"""
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import stat
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ._files import NotRegularFile, exclusive_lock, file_kind, open_regular
from .errors import CnnctcError, DownloadError, IntegrityError, ManifestError, OfflineError
from .errors import os_reason as _os_reason
from .manifest import cache_root, is_inside
from .registry import bundled_asset, list_models, load_manifest

__all__ = ["fetch", "sha256_file", "file_sha256", "verify_file", "check_cached", "check_url", "check_sha256",
           "asset_for_url", "file_name_for_url"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20            # hashing files
NET_CHUNK_SIZE = 64 << 10       # reading the network: a dropped connection loses at most this much
DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (seconds between bytes)
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 1.0           # seconds before the first retry; doubles each time
MAX_BACKOFF = 60.0
_RETRY_STATUS = {408, 429}
MAX_FILE_NAME = 120             # characters of a cache file name taken from a URL
# Files this module keeps beside an asset; an asset must never be named like one of them.
_SIDE_SUFFIXES = (".part", ".part.json", ".lock", ".verified", ".tmp")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# --- reading files ---------------------------------------------------------------------------

def _open_regular(path, *, follow_symlinks=True):
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


def _read_small(path):
    """The text of a small side file (stamp, resume record), or None when it cannot be read."""
    try:
        with _open_regular(path) as f:
            return f.read(1 << 16).decode("utf-8")
    except (CnnctcError, OSError, UnicodeDecodeError):
        return None


def sha256_file(path, chunk_size=CHUNK_SIZE):
    """SHA-256 of a regular file, read in constant memory; CnnctcError names a file it cannot read."""
    digest = hashlib.sha256()
    with _open_regular(path) as f:
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

def _stamp_path(path):
    return path.with_name(path.name + ".verified")


def _identity(st):
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _read_stamp(path):
    text = _read_small(_stamp_path(path))
    try:
        stamp = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return stamp if isinstance(stamp, dict) else None


def _write_stamp(path, sha256, st):
    stamp = dict(_identity(st), sha256=sha256)
    tmp = _stamp_path(path).with_name(_stamp_path(path).name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, _stamp_path(path))
    except OSError as exc:  # a read-only cache still works, it just re-hashes every time
        log.debug("cannot write %s: %s", _stamp_path(path), exc)
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
    stamp = _read_stamp(path)
    if stamp and stamp.get("sha256") and {k: stamp.get(k) for k in _identity(st)} == _identity(st):
        return stamp["sha256"]
    actual = sha256_file(path)
    with contextlib.suppress(OSError):
        if os.stat(path).st_mtime_ns == st.st_mtime_ns:  # not written to while we read it
            _write_stamp(path, actual, st)
    return actual


def _present(path):
    """True when ``path`` names something (a dangling symlink counts as missing)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # there, but not reachable: let the reader name the reason
    return True


def _mismatch(path, expected, actual):
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
    if not _HEX64.match(expected.strip().lower()):
        raise ValueError(f"verify_file: expected must be 64 hexadecimal digits (as `sha256sum` prints them), got "
                         f"{_show(expected, 70)!r}")
    path = Path(path)
    if not _present(path):
        raise IntegrityError(f"{path}: no such file")
    actual = file_sha256(path)
    if actual != expected.strip().lower():
        raise _mismatch(path, expected, actual)
    return path


def _bundled(manifest):
    """The verified weights shipped inside the package for ``manifest``, or None when it names none."""
    path = bundled_asset(manifest)
    if path is None:
        return None
    actual = sha256_file(path) if _present(path) else None  # a few MB: hashed on every use, no stamp
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
        if not _present(bundled):
            return "missing"
        return "bundled" if sha256_file(bundled) == manifest.sha256 else "corrupt"
    path = manifest.cache_path(cache_dir)
    if not _present(path):
        return "missing"
    return "verified" if file_sha256(path) == manifest.sha256 else "corrupt"


# --- identical bytes under several names --------------------------------------------------------
# Hub versions 1.3 to 1.7 publish one file under four names (1.8 to 1.10 another under three): a
# verified copy already in the cache serves the others without the network.

def _verified_copies(root, sha256, target):
    """Cached files other than ``target`` whose stamps (or registry paths) say they hash to ``sha256``."""
    seen, found = {os.path.abspath(target)}, []
    candidates = []
    for depth in ("*", "*/*", "*/*/*", "*/*/*/*"):
        candidates += [stamp.with_name(stamp.name[:-len(".verified")])
                       for stamp in root.glob(f"{depth}/*.verified")]
    candidates += [entry.manifest.cache_path(root) for entry in list_models() if entry.manifest.sha256 == sha256]
    for path in candidates:
        key = os.path.abspath(path)
        if key in seen or not _present(path):
            continue
        seen.add(key)
        stamp = _read_stamp(path)
        if stamp is not None and stamp.get("sha256") not in (None, sha256):
            continue  # stamped as another file: not worth hashing
        try:
            if file_sha256(path) == sha256:
                found.append(Path(path))
        except CnnctcError:
            continue
    return found


def _from_identical_copy(sources, target, sha256):
    """Make ``target`` from one of ``sources``, verified files with the same SHA-256: a hard link
    where the filesystem allows, else a copy verified while it is written. Returns ``target`` or None."""
    for source in sources:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                os.link(source, tmp)
                how = "linked"
            except OSError:
                digest = hashlib.sha256()
                with _open_regular(source) as src, open(tmp, "wb") as out:
                    for block in iter(lambda: src.read(CHUNK_SIZE), b""):
                        digest.update(block)
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                if digest.hexdigest() != sha256:
                    continue
                how = "copied"
            os.replace(tmp, target)
        except (OSError, CnnctcError) as exc:
            log.debug("cannot reuse %s: %s", source, exc)
            continue
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        # A link changes the shared inode's ctime: both names get a fresh stamp of the verified hash.
        for path in {source, target}:
            with contextlib.suppress(OSError):
                _write_stamp(path, sha256, os.stat(path))
        log.info("%s %s from the identical verified file %s", how, target.name, source)
        return target
    return None


# --- URLs, hashes and cache file names -------------------------------------------------------

def _show(text, limit=100):
    """``text`` for an error message: control characters escaped, long values shortened."""
    shown = text if text.isprintable() else repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def check_url(url, what="URL"):
    """Return ``url`` if it is an absolute http(s) URL with a host; else raise a one-line DownloadError.

    ``what`` names where the URL came from (e.g. ``--url``, ``CNNCTC_ASSET_URL``). Nothing is
    fetched; whether plain http is allowed is decided when downloading.
    """
    if not isinstance(url, str) or not url.strip():
        raise DownloadError(f"{what} is empty; give a full https://host/path URL")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise DownloadError(f"{what} {_show(url)!r} contains spaces or control characters; "
                            "percent-encode them (a space is %20)")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise DownloadError(f"{what} {_show(url)} cannot be parsed: {exc}; give a full https://host/path URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"'{scheme}://'" if scheme else "no scheme"
        raise DownloadError(f"{what} {_show(url)} has {shown}; only https:// (and http:// when allowed) "
                            "can be downloaded")
    if not host:
        raise DownloadError(f"{what} {_show(url)} has no host name; give a full https://host/path URL")
    return url


def check_sha256(sha256, what="SHA-256"):
    """The lower-case form of a 64-hex-digit SHA-256; else a one-line DownloadError."""
    text = sha256.strip().lower() if isinstance(sha256, str) else ""
    if not _HEX64.match(text):
        got = repr(_show(sha256, 70)) if isinstance(sha256, str) else repr(sha256)
        raise DownloadError(f"{what} must be 64 hexadecimal digits (as `sha256sum` prints them), got {got}")
    return text


def file_name_for_url(url, sha256):
    """A safe cache file name for ``url``: the last part of its path, percent-decoded.

    Never the query or fragment; only letters, digits, '.', '_' and '-' (others become '_'),
    starting with a letter or digit, at most :data:`MAX_FILE_NAME` characters, and never one
    of the names this module keeps beside an asset. Falls back to ``<sha256[:16]>.ckpt``.
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


def asset_for_url(manifest, url, sha256):
    """The manifest with ``url``, ``sha256`` and a safe ``file_name`` taken from the URL.

    What ``cnnctc download --url URL --sha256 HEX`` fetches. Both are checked before any network
    access; a bad one raises a one-line DownloadError.
    """
    url = check_url(url, "--url")
    sha = check_sha256(sha256, "--sha256")
    return load_manifest(manifest).replace(url=url, sha256=sha, file_name=file_name_for_url(url, sha))


def _check_url(url, allow_http):
    check_url(url, "the asset URL")
    if urlsplit(url).scheme.lower() == "http" and not allow_http:
        raise DownloadError(f"refusing plain http:// URL {_show(url)}: the SHA-256 still protects the bytes, but "
                            "allow it explicitly with CNNCTC_ALLOW_HTTP=1 or --allow-http")


# --- network errors ------------------------------------------------------------------------

def _causes(exc):
    """``exc`` and everything it wraps (urllib3's ``reason``, args, ``__cause__``, ``__context__``)."""
    seen, queue = set(), [exc]
    while queue:
        e = queue.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        queue.extend([getattr(e, "reason", None), e.__cause__, e.__context__, *getattr(e, "args", ())])


def _reason(exc, host=None):
    """(short reason, retry?) for a requests error, without urllib3's pool and URL preamble."""
    import socket
    import ssl
    import requests
    causes = list(_causes(exc))
    proxy = "proxy: " if any(isinstance(e, requests.exceptions.ProxyError) for e in causes) else ""
    names = {type(e).__name__ for e in causes}
    if "NameResolutionError" in names or any(isinstance(e, socket.gaierror) for e in causes):
        # Not transient in practice: retrying a name that does not resolve only makes the user wait.
        name = "the proxy's host name" if proxy else f"the host name {host}" if host else "the host name"
        return f"{name} does not resolve", False
    for e in causes:
        if isinstance(e, ssl.SSLCertVerificationError):
            detail = getattr(e, "verify_message", "") or "certificate verify failed"
            return f"{proxy}TLS certificate not trusted: {detail}", False
    checks = ((ConnectionRefusedError, "connection refused"), (ConnectionResetError, "connection reset"),
              (requests.exceptions.Timeout, "timed out"), (socket.timeout, "timed out"),
              (TimeoutError, "timed out"), (ssl.SSLError, "TLS handshake failed"),
              (requests.exceptions.ChunkedEncodingError, "connection closed early"))
    for cls, text in checks:
        if any(isinstance(e, cls) for e in causes):
            return proxy + text, True
    if "ProtocolError" in names or "IncompleteRead" in names:
        return f"{proxy}connection closed early", True
    for e in reversed(causes):
        if isinstance(e, OSError) and e.strerror:
            return proxy + e.strerror.lower(), True
    return proxy + type(causes[-1]).__name__, True


TRY_OFFLINE_OPTION = "--model cnnctc/synth-scene"   # finetune names it its own way (training.pretrained)
# Said of a folder (or FIFO...) named as a checkpoint: the user's own folder is never to be removed.
_NAME_THE_FILE = "name the file itself (if it stands where the cache keeps a file, move it away)"
_TRY_OFFLINE = (f"{TRY_OFFLINE_OPTION} (a small model shipped with cnnctc, trained only on synthetic words; "
                "it reads photographs, less well than the hub model)")


def _ways_out(target, sha256):
    return (f"To work offline, put the file whose SHA-256 is {sha256} at {target} and set CNNCTC_OFFLINE=1; "
            f"or fetch it from a mirror (cnnctc download --url URL, or CNNCTC_ASSET_URL=URL for any command); or "
            f"try the package offline with {_TRY_OFFLINE}.")


def _cache_error(root, exc):
    root = Path(root)
    if root.exists() and not root.is_dir():
        reason = "it is a file, not a folder"
    else:
        reason = _os_reason(exc)
        if exc.filename and os.fspath(exc.filename) != os.fspath(root):
            reason += f" ({exc.filename})"
    return DownloadError(f"cannot write to the cache {root}: {reason}; set CNNCTC_CACHE_DIR or --cache-dir "
                         "to a writable folder")


# --- locking ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(lock_path):
    """An exclusive lock across processes; the OS drops it when a holder dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path, wait=lambda: log.info("waiting for another process to finish downloading %s",
                                                         lock_path.name[:-5])):
        yield


# --- downloading -----------------------------------------------------------------------------

class _Retry(Exception):
    """A transient failure: try again after a pause."""


class _GiveUp(Exception):
    """A network failure that another attempt would not cure."""


class _Restart(Exception):
    """The partial file cannot be continued: start from byte 0."""


def _validators(response):
    length = response.headers.get("Content-Length")
    total = None
    if response.status_code == 206:
        content_range = response.headers.get("Content-Range", "")
        if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
            total = int(content_range.rsplit("/", 1)[1])
    elif length and length.isdigit():
        total = int(length)
    return {"etag": response.headers.get("ETag"), "last_modified": response.headers.get("Last-Modified"),
            "total": total}


def _same_remote(saved, now):
    """False when any validator both sides know differs (the remote file changed)."""
    return all(saved.get(k) is None or now.get(k) is None or saved[k] == now[k]
               for k in ("etag", "last_modified", "total"))


def _is_own_file(path):
    """True for a regular file at ``path`` itself (a symbolic link there is not one)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _open_part(part, offset):
    """The partial download for writing: appended to when resuming, else created new. Never through a
    symbolic link: a link (or anything but a regular file) at that name is removed, not written into."""
    if offset:
        fd = os.open(part, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size != offset:
            os.close(fd)
            raise _Restart(f"{part.name} changed while it was being resumed")
        return os.fdopen(fd, "ab")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)  # a symbolic link is removed itself; its target is left alone
    return os.fdopen(os.open(part, _NEW_FILE, 0o666), "wb")


def _write_new(path, data):
    """Write ``data`` to a new file at ``path`` (what was there, a symbolic link included, is removed first)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with os.fdopen(os.open(path, _NEW_FILE, 0o666), "wb") as out:
        out.write(data)


class _Downloader:
    def __init__(self, url, sha256, target, *, timeout, quiet):
        self.url, self.sha256, self.target = url, sha256, target
        self.part = target.with_name(target.name + ".part")
        self.meta = target.with_name(target.name + ".part.json")
        self.timeout, self.quiet = timeout, quiet

    def _read_meta(self):
        text = _read_small(self.meta)
        try:
            meta = json.loads(text) if text is not None else None
        except ValueError:
            return None
        if not isinstance(meta, dict) or meta.get("sha256") != self.sha256 or not _is_own_file(self.part):
            return None
        return meta

    def discard_partial(self):
        for p in (self.part, self.meta):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def attempt(self, session):
        """One HTTP request; returns when the verified file is in place."""
        meta = self._read_meta()
        if meta is None:
            self.discard_partial()
        offset = os.lstat(self.part).st_size if meta else 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if meta.get("etag") or meta.get("last_modified"):
                headers["If-Range"] = meta.get("etag") or meta["last_modified"]
        import requests
        try:
            response = session.get(self.url, headers=headers, stream=True, timeout=self.timeout)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader) as exc:
            raise DownloadError(f"bad URL {_show(self.url)}: {str(exc).splitlines()[0]}") from None
        except requests.RequestException as exc:
            reason, transient = _reason(exc, urlsplit(self.url).hostname)
            raise (_Retry if transient else _GiveUp)(reason) from None
        with response:
            status = response.status_code
            if status in _RETRY_STATUS or status >= 500:
                raise _Retry(f"server answered {status} {response.reason}")
            if status == 416 and offset:
                raise _Restart("server rejected the resume offset (416)")
            if status >= 400:
                raise DownloadError(f"{_show(self.url)}: server answered {status} {response.reason}; not retrying. "
                                    f"Check the URL. {_ways_out(self.target, self.sha256)}")
            now = _validators(response)
            if offset and status == 206:
                start = response.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
                if start != str(offset) or not _same_remote(meta, now):
                    raise _Restart("the remote file changed since the partial download began")
                log.info("resuming %s at byte %d", self.target.name, offset)
            elif offset:
                log.info("server did not resume (answered %d); downloading from the start", status)
                offset = 0
            if offset == 0:
                self.discard_partial()
                _write_new(self.meta, json.dumps(dict(now, url=self.url, sha256=self.sha256)).encode())
            self._stream(response, offset, now["total"])

    def _stream(self, response, offset, total):
        import requests
        digest = hashlib.sha256()
        if offset:
            with _open_regular(self.part, follow_symlinks=False) as f:
                for block in iter(lambda: f.read(CHUNK_SIZE), b""):
                    digest.update(block)
        size = offset
        with _open_part(self.part, offset) as out, _progress(total, offset, self.target.name, self.quiet) as bar:
            try:
                for block in response.iter_content(NET_CHUNK_SIZE):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    bar.update(len(block))
            except requests.RequestException as exc:
                raise _Retry(f"connection lost after {size} bytes: {_reason(exc)[0]}") from None
            out.flush()
            os.fsync(out.fileno())
        if total is not None and size != total:
            raise _Retry(f"incomplete body: {size} of {total} bytes")
        actual = digest.hexdigest()
        if actual != self.sha256:
            resumed = offset > 0
            self.discard_partial()
            if resumed:  # the splice might be at fault; one clean download decides
                raise _Restart(f"resumed download does not match its SHA-256 (got {actual})")
            raise IntegrityError(f"{_show(self.url)}: downloaded bytes do not match the expected SHA-256 "
                                 f"(expected {self.sha256}, got {actual}); nothing was kept. "
                                 "The server or mirror serves another file.")
        os.replace(self.part, self.target)
        with contextlib.suppress(FileNotFoundError):
            self.meta.unlink()
        _write_stamp(self.target, actual, self.target.stat())


class _NullBar:
    def update(self, n):
        pass


@contextlib.contextmanager
def _progress(total, initial, name, quiet):
    from ._streams import is_terminal
    if quiet or not is_terminal(sys.stderr):   # None (2>&-) or closed: no bar
        yield _NullBar()
        return
    from tqdm import tqdm
    with tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
              file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar


def _download(url, sha256, target, *, retries, backoff, timeout, quiet):
    import requests
    downloader = _Downloader(url, sha256, target, timeout=timeout, quiet=quiet)
    where = urlsplit(url).netloc.rpartition("@")[2]
    failures = 0
    with requests.Session() as session:  # proxies and CA bundles come from the environment
        while True:
            try:
                downloader.attempt(session)
                return target
            except _Restart as exc:
                # Only a resumed attempt restarts, and a fresh one either succeeds or fails for good.
                log.warning("%s; starting over", exc)
                downloader.discard_partial()
            except _GiveUp as exc:
                raise DownloadError(f"cannot download {_show(url)}: {exc}; not retrying. "
                                    f"{_ways_out(target, sha256)}") from None
            except _Retry as exc:
                failures += 1
                if failures > retries:
                    kept = " The partial file is kept; run again to resume." if downloader.part.exists() else ""
                    attempts = f"{failures} attempt{'s' if failures > 1 else ''}"
                    raise DownloadError(f"cannot download {_show(url)}: giving up after {attempts}: "
                                        f"{exc}.{kept} {_ways_out(target, sha256)}") from None
                pause = min(MAX_BACKOFF, backoff * 2 ** (failures - 1)) * (1 + 0.1 * random.random())
                log.warning("cannot reach %s: %s; retry %d/%d in %.1fs", where, exc, failures, retries, pause)
                time.sleep(pause)


def fetch(manifest=None, cache_dir=None, *, url=None, force=False, offline=None, allow_http=None,
          quiet=False, retries=DEFAULT_RETRIES, backoff=DEFAULT_BACKOFF, timeout=DEFAULT_TIMEOUT):
    """Return the path of the manifest's verified asset in the cache, downloading it if needed
    (a bundled model's is the verified file inside the package).

    ``url`` (or ``CNNCTC_ASSET_URL``) replaces the manifest's URL; the SHA-256 still binds. It is
    checked before anything else. ``offline`` (or ``CNNCTC_OFFLINE=1``) never touches the
    network. ``force`` replaces a cached file that fails verification. A verified file in a
    read-only cache is used as it is. Raises :class:`DownloadError`, :class:`OfflineError`,
    :class:`IntegrityError` or :class:`ManifestError` with a one-line message meant for the user.
    """
    manifest = load_manifest(manifest)
    bundled = _bundled(manifest)
    if bundled is not None:  # shipped inside the package: nothing to fetch, from anywhere
        return bundled
    root = cache_root(cache_dir)
    target = manifest.cache_path(cache_dir)
    if not is_inside(root, target):
        raise ManifestError(f"{manifest.source or manifest.uid}: the asset's cache path {target} is outside the "
                            f"cache {root}; refusing to write there")
    offline = _env_flag("CNNCTC_OFFLINE") if offline is None else offline
    allow_http = _env_flag("CNNCTC_ALLOW_HTTP") if allow_http is None else allow_http
    if url:
        check_url(url, "the download URL")
    elif os.environ.get("CNNCTC_ASSET_URL"):
        url = check_url(os.environ["CNNCTC_ASSET_URL"], "CNNCTC_ASSET_URL")
    url = url or manifest.url

    def cached():
        if not _present(target):
            return None
        actual = file_sha256(target)
        if actual == manifest.sha256:
            return target
        if not force:
            raise _mismatch(target, manifest.sha256, actual)
        return None

    if cached():
        return target
    try:
        sources = _verified_copies(root, manifest.sha256, target)
        if sources:
            target.parent.mkdir(parents=True, exist_ok=True)
            with _locked(target.with_name(target.name + ".lock")):
                if cached() or _from_identical_copy(sources, target, manifest.sha256):
                    return target
    except OSError as exc:
        raise _cache_error(root, exc) from None
    if offline:
        raise OfflineError(f"offline (CNNCTC_OFFLINE) and {target} is not in the cache. Copy the verified "
                           f"file there (SHA-256 {manifest.sha256}), or download it with network; or try the "
                           f"package offline with {_TRY_OFFLINE}.")
    _check_url(url, allow_http)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target.with_name(target.name + ".lock")):
            if cached():  # another process finished it while we waited
                return target
            if os.path.lexists(target):
                if _present(target):
                    log.warning("replacing %s, which failed verification", target)
                target.unlink()
            log.info("downloading %s to %s", _show(url, 200), target)
            return _download(url, manifest.sha256, target, retries=retries, backoff=backoff,
                             timeout=timeout, quiet=quiet)
    except OSError as exc:
        import requests
        if isinstance(exc, requests.RequestException):  # network errors are handled inside; a stray one
            raise DownloadError(f"cannot download {_show(url)}: {_reason(exc, urlsplit(url).hostname)[0]}. "
                                f"{_ways_out(target, manifest.sha256)}") from None
        raise _cache_error(root, exc) from None
