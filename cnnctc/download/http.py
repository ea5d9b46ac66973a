"""HTTP with retries and resume: one asset downloaded into a ``.part`` file beside its place in the
cache, hashed while it streams, and renamed into place only when its SHA-256 matched.

A transient failure (a timeout, a dropped connection, a 5xx, 408 or 429) is tried again after a
pause that doubles, and the next attempt resumes from the ``.part`` file when the server allows
it and the remote file has not changed; a failure another attempt would not cure (a host name
that does not resolve, an untrusted certificate, a 4xx) ends at once. Every message that gives up
names the ways to work offline or from a mirror.
"""
import contextlib
import hashlib
import json
import logging
import os
import random
import stat
import sys
import time
from urllib.parse import urlsplit

from ..errors import DownloadError, IntegrityError
from .cache import CHUNK_SIZE, open_file, read_small, write_stamp
from .urls import show

log = logging.getLogger(__name__)

NET_CHUNK_SIZE = 64 << 10       # reading the network: a dropped connection loses at most this much
DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (seconds between bytes)
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 1.0           # seconds before the first retry; doubles each time
MAX_BACKOFF = 60.0
_RETRY_STATUS = {408, 429}
TRY_OFFLINE_OPTION = "--model cnnctc/synth-scene"   # finetune names it its own way (training.pretrained)
TRY_OFFLINE = (f"{TRY_OFFLINE_OPTION} (a small model shipped with cnnctc, trained only on synthetic words; "
               "it reads photographs, less well than the hub model)")


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
        text = read_small(self.meta)
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
            raise DownloadError(f"bad URL {show(self.url)}: {str(exc).splitlines()[0]}") from None
        except requests.RequestException as exc:
            reason, transient = network_reason(exc, urlsplit(self.url).hostname)
            raise (_Retry if transient else _GiveUp)(reason) from None
        with response:
            status = response.status_code
            if status in _RETRY_STATUS or status >= 500:
                raise _Retry(f"server answered {status} {response.reason}")
            if status == 416 and offset:
                raise _Restart("server rejected the resume offset (416)")
            if status >= 400:
                raise DownloadError(f"{show(self.url)}: server answered {status} {response.reason}; not retrying. "
                                    f"Check the URL. {ways_out(self.target, self.sha256)}")
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
            with open_file(self.part, follow_symlinks=False) as f:
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
                raise _Retry(f"connection lost after {size} bytes: {network_reason(exc)[0]}") from None
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
            raise IntegrityError(f"{show(self.url)}: downloaded bytes do not match the expected SHA-256 "
                                 f"(expected {self.sha256}, got {actual}); nothing was kept. "
                                 "The server or mirror serves another file.")
        os.replace(self.part, self.target)
        with contextlib.suppress(FileNotFoundError):
            self.meta.unlink()
        write_stamp(self.target, actual, self.target.stat())


class _NullBar:
    def update(self, n):
        pass


@contextlib.contextmanager
def _progress(total, initial, name, quiet):
    from .._streams import is_terminal
    if quiet or not is_terminal(sys.stderr):   # None (2>&-) or closed: no bar
        yield _NullBar()
        return
    from tqdm import tqdm
    with tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
              file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar


def download(url, sha256, target, *, retries, backoff, timeout, quiet):
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
                raise DownloadError(f"cannot download {show(url)}: {exc}; not retrying. "
                                    f"{ways_out(target, sha256)}") from None
            except _Retry as exc:
                failures += 1
                if failures > retries:
                    kept = " The partial file is kept; run again to resume." if downloader.part.exists() else ""
                    attempts = f"{failures} attempt{'s' if failures > 1 else ''}"
                    raise DownloadError(f"cannot download {show(url)}: giving up after {attempts}: "
                                        f"{exc}.{kept} {ways_out(target, sha256)}") from None
                pause = min(MAX_BACKOFF, backoff * 2 ** (failures - 1)) * (1 + 0.1 * random.random())
                log.warning("cannot reach %s: %s; retry %d/%d in %.1fs", where, exc, failures, retries, pause)
                time.sleep(pause)


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


def network_reason(exc, host=None):
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


def ways_out(target, sha256):
    return (f"To work offline, put the file whose SHA-256 is {sha256} at {target} and set CNNCTC_OFFLINE=1; "
            f"or fetch it from a mirror (cnnctc download --url URL, or CNNCTC_ASSET_URL=URL for any command); or "
            f"try the package offline with {TRY_OFFLINE}.")
