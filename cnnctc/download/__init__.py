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

:func:`fetch` is here; the rest in one module each: ``urls`` checks what is given, ``cache`` the
cache's layout and verified stamps, ``copies`` serves an asset from an identical verified file
under another name, ``http`` downloads with retries and resume.
"""
import logging
import os
from urllib.parse import urlsplit

from ..errors import DownloadError, ManifestError, OfflineError
from ..manifest import cache_root, is_inside
from ..registry import load_manifest
from .cache import (CHUNK_SIZE, MAX_FILE_NAME, cache_error, check_cached, file_name_for_url,  # noqa: F401
                    file_sha256, locked, mismatch, present, sha256_file, verified_bundled, verify_file)
from .copies import from_identical_copy, verified_copies
from .http import (DEFAULT_BACKOFF, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_BACKOFF, NET_CHUNK_SIZE,  # noqa: F401
                   TRY_OFFLINE, TRY_OFFLINE_OPTION, download, network_reason, ways_out)
from .urls import check_download_url, check_sha256, check_url, show

__all__ = ["fetch", "sha256_file", "file_sha256", "verify_file", "check_cached", "check_url", "check_sha256",
           "asset_for_url", "file_name_for_url"]

log = logging.getLogger(__name__)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def asset_for_url(manifest, url, sha256):
    """The manifest with ``url``, ``sha256`` and a safe ``file_name`` taken from the URL.

    What ``cnnctc download --url URL --sha256 HEX`` fetches. Both are checked before any network
    access; a bad one raises a one-line DownloadError.
    """
    url = check_url(url, "--url")
    sha = check_sha256(sha256, "--sha256")
    return load_manifest(manifest).replace(url=url, sha256=sha, file_name=file_name_for_url(url, sha))


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
    bundled = verified_bundled(manifest)
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
        if not present(target):
            return None
        actual = file_sha256(target)
        if actual == manifest.sha256:
            return target
        if not force:
            raise mismatch(target, manifest.sha256, actual)
        return None

    if cached():
        return target
    try:
        sources = verified_copies(root, manifest.sha256, target)
        if sources:
            target.parent.mkdir(parents=True, exist_ok=True)
            with locked(target.with_name(target.name + ".lock")):
                if cached() or from_identical_copy(sources, target, manifest.sha256):
                    return target
    except OSError as exc:
        raise cache_error(root, exc) from None
    if offline:
        raise OfflineError(f"offline (CNNCTC_OFFLINE) and {target} is not in the cache. Copy the verified "
                           f"file there (SHA-256 {manifest.sha256}), or download it with network; or try the "
                           f"package offline with {TRY_OFFLINE}.")
    check_download_url(url, allow_http)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked(target.with_name(target.name + ".lock")):
            if cached():  # another process finished it while we waited
                return target
            if os.path.lexists(target):
                if present(target):
                    log.warning("replacing %s, which failed verification", target)
                target.unlink()
            log.info("downloading %s to %s", show(url, 200), target)
            return download(url, manifest.sha256, target, retries=retries, backoff=backoff,
                            timeout=timeout, quiet=quiet)
    except OSError as exc:
        import requests
        if isinstance(exc, requests.RequestException):  # network errors are handled inside; a stray one
            raise DownloadError(f"cannot download {show(url)}: {network_reason(exc, urlsplit(url).hostname)[0]}. "
                                f"{ways_out(target, manifest.sha256)}") from None
        raise cache_error(root, exc) from None
