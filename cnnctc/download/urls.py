"""URLs and SHA-256 hashes as they are given: each is checked, with a one-line DownloadError, before any
network access."""
import re
from urllib.parse import urlsplit

from ..errors import DownloadError

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def show(text, limit=100):
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
        raise DownloadError(f"{what} {show(url)!r} contains spaces or control characters; "
                            "percent-encode them (a space is %20)")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise DownloadError(f"{what} {show(url)} cannot be parsed: {exc}; give a full https://host/path URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"'{scheme}://'" if scheme else "no scheme"
        raise DownloadError(f"{what} {show(url)} has {shown}; only https:// (and http:// when allowed) "
                            "can be downloaded")
    if not host:
        raise DownloadError(f"{what} {show(url)} has no host name; give a full https://host/path URL")
    return url


def check_sha256(sha256, what="SHA-256"):
    """The lower-case form of a 64-hex-digit SHA-256; else a one-line DownloadError."""
    text = sha256.strip().lower() if isinstance(sha256, str) else ""
    if not HEX64.match(text):
        got = repr(show(sha256, 70)) if isinstance(sha256, str) else repr(sha256)
        raise DownloadError(f"{what} must be 64 hexadecimal digits (as `sha256sum` prints them), got {got}")
    return text


def check_download_url(url, allow_http):
    check_url(url, "the asset URL")
    if urlsplit(url).scheme.lower() == "http" and not allow_http:
        raise DownloadError(f"refusing plain http:// URL {show(url)}: the SHA-256 still protects the bytes, but "
                            "allow it explicitly with CNNCTC_ALLOW_HTTP=1 or --allow-http")
