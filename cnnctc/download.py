"""Fetch, verify and cache checkpoint assets.

Guarantees (see the README): the file at the final cache path only ever appears by an atomic
rename after its SHA-256 matched; a cached file is re-verified before use whenever its size,
mtime, ctime or inode changed since it was last hashed; interrupted downloads resume from a
``.part`` file; one process downloads while the others wait on a lock beside the target.
No MindSpore import here, so ``cnnctc verify`` and ``cnnctc download`` start fast.
"""
import contextlib
import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from .errors import DownloadError, IntegrityError, OfflineError
from .manifest import load_manifest

__all__ = ["fetch", "sha256_file", "file_sha256", "verify_file", "check_cached"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20            # hashing files
NET_CHUNK_SIZE = 64 << 10       # reading the network: a dropped connection loses at most this much
DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (seconds between bytes)
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 1.0           # seconds before the first retry; doubles each time
MAX_BACKOFF = 60.0
_RETRY_STATUS = {408, 429}


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_file(path, chunk_size=CHUNK_SIZE):
    """SHA-256 of a file, read in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
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
    try:
        return json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return None


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


def file_sha256(path):
    """SHA-256 of ``path``, taken from its stamp when the file has not changed since it was hashed."""
    path = Path(path)
    st = path.stat()
    stamp = _read_stamp(path)
    if stamp and stamp.get("sha256") and {k: stamp.get(k) for k in _identity(st)} == _identity(st):
        return stamp["sha256"]
    actual = sha256_file(path)
    if path.stat().st_mtime_ns == st.st_mtime_ns:  # not written to while we read it
        _write_stamp(path, actual, st)
    return actual


def _mismatch(path, expected, actual):
    return IntegrityError(
        f"{path}: SHA-256 mismatch (expected {expected}, got {actual}); the file is corrupt or not the "
        f"asset the manifest names. It was not loaded. Delete it and download again "
        f"(`cnnctc download --force`), or point CNNCTC_MANIFEST at a manifest that names it.")


def verify_file(path, expected):
    """Raise :class:`IntegrityError` unless ``path`` hashes to ``expected``; returns the path."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path}: no such file")
    actual = file_sha256(path)
    if actual != expected.lower():
        raise _mismatch(path, expected, actual)
    return path


def check_cached(manifest, cache_dir=None):
    """The state of the manifest's asset in the cache: 'missing', 'verified' or 'corrupt'."""
    path = manifest.cache_path(cache_dir)
    if not path.is_file():
        return "missing"
    return "verified" if file_sha256(path) == manifest.sha256 else "corrupt"


# --- locking ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(lock_path):
    """An exclusive lock across processes; the OS drops it when a holder dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            unlock = lambda: msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # noqa: E731
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process to finish downloading %s", lock_path.name[:-5])
                fcntl.flock(fd, fcntl.LOCK_EX)
            unlock = lambda: fcntl.flock(fd, fcntl.LOCK_UN)  # noqa: E731
        try:
            yield
        finally:
            unlock()
    finally:
        os.close(fd)


# --- downloading -----------------------------------------------------------------------------

class _Retry(Exception):
    """A transient failure: try again after a pause."""


class _Restart(Exception):
    """The partial file cannot be continued: start from byte 0."""


def _check_url(url, allow_http):
    scheme = urlsplit(url).scheme.lower()
    if scheme == "https":
        return
    if scheme == "http":
        if allow_http:
            return
        raise DownloadError(f"refusing plain http:// URL {url}: the SHA-256 still protects the bytes, but "
                            "allow it explicitly with CNNCTC_ALLOW_HTTP=1 or --allow-http")
    raise DownloadError(f"unsupported URL {url!r}: only https:// (and http:// when allowed) can be downloaded")


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


def _reason(exc):
    """The innermost cause of a requests error, without urllib3's pool and URL preamble."""
    text = str(exc)
    if "Caused by " in text:
        text = text.split("Caused by ", 1)[1].rstrip(")")
    return text


class _Downloader:
    def __init__(self, url, sha256, target, *, timeout, quiet):
        self.url, self.sha256, self.target = url, sha256, target
        self.part = target.with_name(target.name + ".part")
        self.meta = target.with_name(target.name + ".part.json")
        self.timeout, self.quiet = timeout, quiet

    def _read_meta(self):
        try:
            meta = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("sha256") != self.sha256 or not self.part.is_file():
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
        offset = self.part.stat().st_size if meta else 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if meta.get("etag") or meta.get("last_modified"):
                headers["If-Range"] = meta.get("etag") or meta["last_modified"]
        import requests
        try:
            response = session.get(self.url, headers=headers, stream=True, timeout=self.timeout)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise DownloadError(f"bad URL {self.url}: {exc}") from None
        except requests.RequestException as exc:
            raise _Retry(f"cannot connect: {_reason(exc)}") from None
        with response:
            status = response.status_code
            if status in _RETRY_STATUS or status >= 500:
                raise _Retry(f"server answered {status} {response.reason}")
            if status == 416 and offset:
                raise _Restart("server rejected the resume offset (416)")
            if status >= 400:
                raise DownloadError(f"{self.url}: server answered {status} {response.reason}; not retrying. "
                                    "Check the URL, or use a mirror (CNNCTC_ASSET_URL / --url).")
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
                self.meta.write_text(json.dumps(dict(now, url=self.url, sha256=self.sha256)))
            self._stream(response, offset, now["total"])

    def _stream(self, response, offset, total):
        import requests
        digest = hashlib.sha256()
        if offset:
            with open(self.part, "rb") as f:
                for block in iter(lambda: f.read(CHUNK_SIZE), b""):
                    digest.update(block)
        size = offset
        with open(self.part, "ab" if offset else "wb") as out, _progress(total, offset, self.target.name,
                                                                           self.quiet) as bar:
            try:
                for block in response.iter_content(NET_CHUNK_SIZE):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    bar.update(len(block))
            except requests.RequestException as exc:
                raise _Retry(f"connection lost after {size} bytes: {_reason(exc)}") from None
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
            raise IntegrityError(f"{self.url}: downloaded bytes do not match the manifest's SHA-256 "
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
    if quiet or not sys.stderr.isatty():
        yield _NullBar()
        return
    from tqdm import tqdm
    with tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
              file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar


def _download(url, sha256, target, *, retries, backoff, timeout, quiet):
    import requests
    downloader = _Downloader(url, sha256, target, timeout=timeout, quiet=quiet)
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
            except _Retry as exc:
                failures += 1
                if failures > retries:
                    kept = " The partial file is kept; run again to resume." if downloader.part.exists() else ""
                    raise DownloadError(f"{url}: giving up after {failures} attempts: {exc}.{kept}") from None
                pause = min(MAX_BACKOFF, backoff * 2 ** (failures - 1)) * (1 + 0.1 * random.random())
                log.warning("%s; retry %d/%d in %.1fs", exc, failures, retries, pause)
                time.sleep(pause)


def fetch(manifest=None, cache_dir=None, *, url=None, force=False, offline=None, allow_http=None,
          quiet=False, retries=DEFAULT_RETRIES, backoff=DEFAULT_BACKOFF, timeout=DEFAULT_TIMEOUT):
    """Return the path of the manifest's verified asset in the cache, downloading it if needed.

    ``url`` (or ``CNNCTC_ASSET_URL``) replaces the manifest's URL; the SHA-256 still binds.
    ``offline`` (or ``CNNCTC_OFFLINE=1``) never touches the network. ``force`` replaces a
    cached file that fails verification. Raises :class:`DownloadError`,
    :class:`OfflineError` or :class:`IntegrityError` with a message meant for the user.
    """
    manifest = load_manifest(manifest)
    target = manifest.cache_path(cache_dir)
    offline = _env_flag("CNNCTC_OFFLINE") if offline is None else offline
    allow_http = _env_flag("CNNCTC_ALLOW_HTTP") if allow_http is None else allow_http
    url = url or os.environ.get("CNNCTC_ASSET_URL") or manifest.url

    def cached():
        if not target.is_file():
            return None
        actual = file_sha256(target)
        if actual == manifest.sha256:
            return target
        if not force:
            raise _mismatch(target, manifest.sha256, actual)
        return None

    if cached():
        return target
    if offline:
        raise OfflineError(f"offline (CNNCTC_OFFLINE) and {target} is not in the cache. Copy the verified "
                           f"file there (SHA-256 {manifest.sha256}), or download it with network.")
    _check_url(url, allow_http)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(target.name + ".lock")):
        if cached():  # another process finished it while we waited
            return target
        if target.exists():
            log.warning("replacing %s, which failed verification", target)
            target.unlink()
        log.info("downloading %s to %s", url, target)
        return _download(url, manifest.sha256, target, retries=retries, backoff=backoff,
                         timeout=timeout, quiet=quiet)
