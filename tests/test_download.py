"""The asset pipeline against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import subprocess_env, write_manifest
from cnnctc import download
from cnnctc.download import fetch, file_sha256
from cnnctc.errors import DownloadError, IntegrityError, OfflineError
from cnnctc.registry import load_manifest

FAST = dict(backoff=0.01, allow_http=True, quiet=True)
CONTENT = os.urandom(3 * 1024 * 1024 + 123)


def manifest_for(tmp_path, server, **changes):
    fields = dict(url=server.url, sha256=server.sha256, file_name="cnnctc-test.ckpt")
    fields.update(changes)
    return load_manifest(write_manifest(tmp_path / "manifest.json", **fields))


def final_and_leftovers(manifest):
    target = manifest.cache_path()
    return target, sorted(p.name for p in target.parent.iterdir()) if target.parent.exists() else []


def test_download_succeeds_and_is_cached(tmp_path, serve):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server)
    path = fetch(manifest, **FAST)
    assert path == manifest.cache_path()
    assert path.read_bytes() == CONTENT
    assert fetch(manifest, **FAST) == path  # second call: from the cache, no request
    assert len(server.log) == 1
    _, names = final_and_leftovers(manifest)
    assert not [n for n in names if n.endswith(".part") or n.endswith(".part.json")]


def test_cache_path_is_the_hub_clients(tmp_path):
    manifest = load_manifest()
    assert manifest.cache_path(tmp_path) == tmp_path / "mindspore" / "1.3" / manifest.file_name


def test_dropped_twice_then_resumes_by_range(tmp_path, serve):
    server = serve(CONTENT)
    server.plan = ["drop:1000000", "drop:700000"]
    manifest = manifest_for(tmp_path, server)
    path = fetch(manifest, **FAST)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == server.sha256
    ranges = [entry[1] for entry in server.log]
    assert len(ranges) == 3 and ranges[0] is None
    first, second = (int(r.split("=")[1].rstrip("-")) for r in ranges[1:])
    # Each resume starts where the kept bytes end (at most one network read is lost per drop).
    assert 0 < first <= 1000000 < first + download.NET_CHUNK_SIZE
    assert first < second <= first + 700000 < second + download.NET_CHUNK_SIZE
    assert server.log[-1][3] == len(CONTENT) - second


def test_server_ignoring_range_gets_a_full_download(tmp_path, serve):
    server = serve(CONTENT)
    server.plan = ["drop:1000000", "ignore-range"]
    manifest = manifest_for(tmp_path, server)
    path = fetch(manifest, **FAST)
    assert path.read_bytes() == CONTENT
    assert [entry[2] for entry in server.log] == [200, 200]


def test_remote_change_between_attempts_is_not_spliced(tmp_path, serve):
    old = os.urandom(len(CONTENT))
    server = serve(old, etag="old")
    server.plan = ["drop:1000000"]
    manifest = manifest_for(tmp_path, server, sha256=hashlib.sha256(CONTENT).hexdigest())
    with pytest.raises(DownloadError):
        fetch(manifest, retries=0, **FAST)  # leaves 1 MB of the old file as .part
    server.content, server.etag = CONTENT, "new"
    path = fetch(manifest, **FAST)
    assert path.read_bytes() == CONTENT
    # The resume was asked with If-Range; the server answered the whole new file.
    assert server.log[-1][1].startswith("bytes=") and server.log[-1][2] == 200


def test_remote_change_detected_by_validators_even_if_server_resumes(tmp_path, serve):
    old = os.urandom(len(CONTENT))
    server = serve(old, etag="same")
    server.plan = ["drop:1000000"]
    manifest = manifest_for(tmp_path, server, sha256=hashlib.sha256(CONTENT + b"x").hexdigest())
    with pytest.raises(DownloadError):
        fetch(manifest, retries=0, **FAST)
    # The new file has the same ETag (a careless mirror) but another length: no splice.
    server.content = CONTENT + b"x"
    path = fetch(manifest, **FAST)
    assert path.read_bytes() == CONTENT + b"x"
    assert server.log[-1][1] is None  # started over without a Range


def test_503_twice_then_ok(tmp_path, serve):
    server = serve(CONTENT)
    server.plan = ["status:503", "status:503"]
    path = fetch(manifest_for(tmp_path, server), **FAST)
    assert path.read_bytes() == CONTENT
    assert [entry[2] for entry in server.log] == [503, 503, 200]


def test_404_fails_at_once(tmp_path, serve):
    server = serve(CONTENT)
    server.plan = ["status:404"]
    manifest = manifest_for(tmp_path, server)
    with pytest.raises(DownloadError, match="404"):
        fetch(manifest, **FAST)
    assert len(server.log) == 1
    assert not manifest.cache_path().exists()


def test_stall_times_out_then_retries(tmp_path, serve):
    server = serve(CONTENT)
    server.plan = ["stall:3"]
    started = time.monotonic()
    path = fetch(manifest_for(tmp_path, server), timeout=(2, 0.5), **FAST)
    assert path.read_bytes() == CONTENT
    assert [entry[0] for entry in server.log][-1] == "ok"
    assert time.monotonic() - started < 60  # a sanity bound, not a benchmark: no hang


def test_wrong_bytes_leave_nothing_at_the_final_path(tmp_path, serve):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server, sha256="0" * 64)
    with pytest.raises(IntegrityError, match="expected 0{64}, got " + server.sha256):
        fetch(manifest, **FAST)
    target, names = final_and_leftovers(manifest)
    assert not target.exists()
    assert not [n for n in names if ".part" in n]


def test_flipped_byte_in_cache_is_detected_before_use(tmp_path, serve):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server)
    path = fetch(manifest, **FAST)
    with open(path, "r+b") as f:
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        fetch(manifest, **FAST)
    assert len(server.log) == 1  # not silently replaced either
    assert fetch(manifest, force=True, **FAST).read_bytes() == CONTENT


def test_stamp_is_rechecked_when_the_file_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    assert (tmp_path / "f.bin.verified").exists()
    st = path.stat()
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: ctime still differs
    assert file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest() != first


def test_offline_with_and_without_cached_file(tmp_path, serve, monkeypatch):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server)
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    with pytest.raises(OfflineError, match="not in the cache"):
        fetch(manifest, **FAST)
    monkeypatch.delenv("CNNCTC_OFFLINE")
    fetch(manifest, **FAST)
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    server.plan = ["status:500"] * 10
    assert fetch(manifest, **FAST).read_bytes() == CONTENT
    assert len(server.log) == 1


def test_mirror_url_from_environment_still_bound_by_sha(tmp_path, serve, monkeypatch):
    good, evil = serve(CONTENT), serve(b"evil" * 1000)
    manifest = manifest_for(tmp_path, good, url="https://unreachable.invalid/cnnctc.ckpt")
    monkeypatch.setenv("CNNCTC_ASSET_URL", evil.url)
    with pytest.raises(IntegrityError):
        fetch(manifest, **FAST)
    monkeypatch.setenv("CNNCTC_ASSET_URL", good.url)
    assert fetch(manifest, **FAST).read_bytes() == CONTENT
    assert not good.log[0][1]


def test_plain_http_is_refused_unless_allowed(tmp_path, serve):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server)
    with pytest.raises(DownloadError, match="refusing plain http"):
        fetch(manifest, quiet=True)
    assert server.log == []


FETCH_SCRIPT = """
import sys
from cnnctc.download import fetch
print(fetch(sys.argv[1], allow_http=True, quiet=True, backoff=0.01))
"""


def test_three_processes_share_one_download(tmp_path, serve):
    server = serve(CONTENT, throttle=0.02)
    manifest = manifest_for(tmp_path, server)
    env = subprocess_env()
    procs = [subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, str(manifest.source)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {str(manifest.cache_path())}
    assert manifest.cache_path().read_bytes() == CONTENT
    assert len(server.log) == 1 and server.body_bytes_served() == len(CONTENT)


def test_sigkill_mid_download_then_resume(tmp_path, serve):
    server = serve(CONTENT, throttle=0.05)
    manifest = manifest_for(tmp_path, server)
    part = manifest.cache_path().with_name(manifest.cache_path().name + ".part")
    proc = subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, str(manifest.source)], env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size >= 512 * 1024):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = part.stat().st_size
    assert 0 < kept < len(CONTENT)
    server.throttle = 0
    path = fetch(manifest, **FAST)
    assert path.read_bytes() == CONTENT
    assert server.log[-1][1] == f"bytes={kept}-"


def test_retries_exhausted_keeps_partial_and_says_so(tmp_path, serve):
    server = serve(CONTENT)
    server.plan = ["drop:300000"] * 3
    manifest = manifest_for(tmp_path, server)
    with pytest.raises(DownloadError, match="giving up after 3 attempts.*resume"):
        fetch(manifest, retries=2, **FAST)
    assert not manifest.cache_path().exists()
    assert fetch(manifest, **FAST).read_bytes() == CONTENT


def test_download_module_does_not_import_mindspore():
    code = "import sys, cnnctc.cli, cnnctc.download, cnnctc.hub; print('mindspore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    assert download.CHUNK_SIZE <= 4 << 20  # constant-memory hashing


def test_proxy_from_the_environment_is_used(tmp_path, serve, monkeypatch):
    # The "proxy" is a server that answers any request with the asset; the asset URL points at
    # a port nobody listens on, so only a request sent through the proxy can succeed.
    proxy = serve(CONTENT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    url = f"http://127.0.0.1:{dead_port}/cnnctc.ckpt"
    manifest = manifest_for(tmp_path, proxy, url=url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.httpd.server_address[1]}")
    assert fetch(manifest, retries=0, **FAST).read_bytes() == CONTENT
    assert proxy.paths == [url]  # a proxy request carries the absolute URL
