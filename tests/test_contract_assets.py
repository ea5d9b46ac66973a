"""The error contract of the asset pipeline and checkpoint files (issue 8), on real files, a real
HTTP server on 127.0.0.1, real subprocesses and real MindSpore checkpoints.

For each bad input: the right exception or exit status, one line, no traceback, a time bound, and
the user's files unchanged. Permission cases run in a subprocess as an unprivileged user when the
tests run as root (root reads and writes through any mode bits).
"""
import contextlib
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_in_process, subprocess_env, write_manifest
from cnnctc.download import (MAX_FILE_NAME, asset_for_url, check_cached, fetch, file_name_for_url, file_sha256,
                             sha256_file, verify_file)
from cnnctc.errors import CheckpointError, CnnctcError, DownloadError, IntegrityError, ManifestError
from cnnctc.manifest import is_inside
from cnnctc.registry import load_manifest

FAST = dict(backoff=0.01, allow_http=True, quiet=True)
CONTENT = os.urandom(200_000)
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
UNPRIVILEGED = 65534  # the conventional 'nobody'


# --- helpers ---------------------------------------------------------------------------------

def manifest_for(tmp_path, server=None, **changes):
    fields = dict(url=server.url, sha256=server.sha256) if server else {}
    fields.update(file_name="asset.ckpt")
    fields.update(changes)
    return load_manifest(write_manifest(tmp_path / "manifest.json", **fields))


def one_line(message):
    text = str(message)
    assert "\n" not in text and "Traceback" not in text, text
    assert text.count("(") == text.count(")"), text
    return text


def tree_digest(*paths):
    """Names, kinds and contents of everything under ``paths`` (a FIFO is named, never opened)."""
    found = {}
    for top in paths:
        top = Path(top)
        for p in [top, *sorted(top.rglob("*"))] if top.is_dir() else [top]:
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                found[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                found[str(p)] = stat.S_IFMT(st.st_mode)
    return found


def dead_port():
    """A port on 127.0.0.1 that nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AsSelf:
    """How to start a subprocess as a given user: a command prefix and subprocess.run arguments."""
    prefix = ()
    kwargs = {}


def cli(*args, timeout=120, env=None, user=AsSelf, **kwargs):
    """Run ``cnnctc ARGS`` in a subprocess; never a traceback, whatever the outcome."""
    proc = subprocess.run([*user.prefix, sys.executable, "-m", "cnnctc", *args], env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout, **user.kwargs, **kwargs)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def cli_error(proc, status=1):
    """The single 'cnnctc: error:' line of a failed run."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cnnctc: error:")]
    assert len(errors) == 1, proc.stderr
    return one_line(errors[0])


# Runs Python API calls in a subprocess (so a call that blocks cannot hang the test run) and
# prints, for each, ["ok", result] or [exception class, message].
API_PRELUDE = """
import json, sys
results = []
def call(fn, *args, **kwargs):
    try:
        results.append(["ok", str(fn(*args, **kwargs))])
    except Exception as exc:
        results.append([type(exc).__name__, str(exc)])
"""


def api(code, *args, timeout=60, env=None, user=AsSelf, **kwargs):
    script = API_PRELUDE + code + "\nprint(json.dumps(results))"
    proc = subprocess.run([*user.prefix, sys.executable, "-c", script, *map(str, args)], env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout, **user.kwargs, **kwargs)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def shared_folder():
    """A folder another user can enter (tmp_path's parents are private to the test's user)."""
    path = Path(tempfile.mkdtemp(prefix="cnnctc-contract-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:  # give write access back so that everything can be removed
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(path)


@pytest.fixture
def shared_tmp():
    with shared_folder() as path:
        yield path


@pytest.fixture(scope="module")
def unprivileged():
    """How to run a subprocess without root's disregard for permissions (ourselves when not root)."""
    if os.geteuid() != 0:
        return AsSelf
    ids = (UNPRIVILEGED,) * 2

    class ByKwargs(AsSelf):
        kwargs = dict(user=ids[0], group=ids[1], extra_groups=[])

    class BySetpriv(AsSelf):  # util-linux; also when the interpreter lives under a private home
        prefix = ("setpriv", f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups")

    for way in (ByKwargs, BySetpriv):
        try:
            probe = subprocess.run([*way.prefix, sys.executable, "-c", "import os, cnnctc.download; print(os.geteuid())"],
                                   env=subprocess_env(), capture_output=True, text=True, timeout=60, cwd="/",
                                   **way.kwargs)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == str(ids[0]):
            return way
    pytest.skip("cannot run Python as an unprivileged user here, so permissions cannot be tested")


def read_only(*paths):
    for p in paths:
        Path(p).chmod(0o555)


# --- 1. offline / unreachable network --------------------------------------------------------

def check_ways_out(message, manifest):
    assert "CNNCTC_OFFLINE=1" in message
    assert str(manifest.cache_path()) in message
    assert manifest.sha256 in message
    assert "--url" in message and "CNNCTC_ASSET_URL" in message
    assert "Pool" not in message and "Max retries" not in message and "Errno" not in message


def test_unresolvable_host_fails_at_once_and_names_the_ways_out(tmp_path, caplog):
    manifest = manifest_for(tmp_path, url="https://nonexistent.invalid/x.ckpt", sha256="ab" * 32)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cnnctc.download"), pytest.raises(DownloadError) as info:
        fetch(manifest, quiet=True)  # the default retries and backoff
    # "At once" is checked as "no retry was made" (a busy machine cannot fail that); the bound only
    # catches a hang.
    assert not [r for r in caplog.records if "retry" in r.getMessage()], caplog.text
    assert time.monotonic() - started < 60
    message = one_line(info.value)
    assert "giving up after" not in message
    assert "nonexistent.invalid does not resolve" in message
    check_ways_out(message, manifest)
    assert not manifest.cache_path().exists()


def test_unresolvable_host_from_the_cli(tmp_path):
    manifest = manifest_for(tmp_path, sha256="cd" * 32)
    env = subprocess_env(CNNCTC_MANIFEST=manifest.source, CNNCTC_ASSET_URL="https://nonexistent.invalid/x.ckpt")
    proc = cli("download", env=env, timeout=120)  # the timeout only catches a hang
    message = cli_error(proc)
    assert "giving up after" not in message  # failed at once: no retry was made (also checked below)
    assert "does not resolve" in message
    check_ways_out(message, manifest)
    assert "; retry " not in proc.stderr


def test_refused_connection_is_retried_with_short_lines_then_one_error(tmp_path, caplog):
    url = f"http://127.0.0.1:{dead_port()}/x.ckpt"
    manifest = manifest_for(tmp_path, url=url, sha256="ef" * 32)
    with caplog.at_level(logging.WARNING, logger="cnnctc.download"):
        with pytest.raises(DownloadError) as info:
            fetch(manifest, retries=2, **FAST)
    message = one_line(info.value)
    assert "giving up after 3 attempts: connection refused" in message
    check_ways_out(message, manifest)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    for line in retries:
        assert "connection refused" in line and len(line) < 100 and "Pool" not in line, line


def test_timeout_is_named_as_such(tmp_path, serve):
    server = serve(CONTENT)
    server.plan = ["stall:3"]
    manifest = manifest_for(tmp_path, server)
    with pytest.raises(DownloadError) as info:
        fetch(manifest, retries=0, timeout=(2, 0.3), **FAST)
    message = one_line(info.value)
    assert "timed out" in message and "giving up after 1 attempt:" in message
    assert not manifest.cache_path().exists()


def test_http_error_names_the_ways_out(tmp_path, serve):
    server = serve(CONTENT)
    server.plan = ["status:403"]
    manifest = manifest_for(tmp_path, server)
    with pytest.raises(DownloadError) as info:
        fetch(manifest, **FAST)
    message = one_line(info.value)
    assert "403" in message
    check_ways_out(message, manifest)
    assert len(server.log) == 1


# --- 2. URLs, hashes and file names ----------------------------------------------------------

BAD_URLS = ["https://[bad", "https://[bad/x.ckpt", "ftp://example.org/x.ckpt", "file:///etc/passwd",
            "https:///x.ckpt", "example.org/x.ckpt", "https://example.org:99999/x.ckpt",
            "https://example.org:port/x.ckpt", "https://example.org/a b.ckpt", "https://example.org/x\n.ckpt",
            "", "   "]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_url_is_refused_before_any_network_access(url):
    with pytest.raises(DownloadError) as info:
        asset_for_url(None, url, "ab" * 32)
    message = one_line(info.value)
    assert message.startswith("--url")


@pytest.mark.parametrize("sha256", ["abc", "g" * 64, "a" * 63, "a" * 65, "", None, 123, "a" * 32 + " " + "a" * 31])
def test_bad_sha256_is_refused_before_any_network_access(serve, sha256):
    server = serve(CONTENT)
    with pytest.raises(DownloadError, match="64 hexadecimal digits") as info:
        asset_for_url(None, server.url, sha256)
    one_line(info.value)
    assert server.log == []


def test_sha256_is_normalised():
    manifest = asset_for_url(None, "https://example.org/m.ckpt", "  " + "AB" * 32 + "\n")
    assert manifest.sha256 == "ab" * 32 and manifest.url == "https://example.org/m.ckpt"


@pytest.mark.parametrize("url, expected", [
    ("https://h.org/dir/model.ckpt", "model.ckpt"),
    ("https://h.org/dir/model.ckpt?token=" + "x" * 5000 + "#frag", "model.ckpt"),
    ("https://h.org/model.ckpt#part", "model.ckpt"),
    ("https://h.org/my%20model%20(v2).ckpt", "my_model__v2_.ckpt"),
    ("https://h.org/a%2Fb%5Cc.ckpt", "a_b_c.ckpt"),
    ("https://h.org/.hidden.ckpt", "hidden.ckpt"),
    ("https://h.org/", None),
    ("https://h.org", None),
    ("https://h.org/dir/..", None),
    ("https://h.org/dir/.", None),
    ("https://h.org/%2e%2e", None),
    ("https://h.org/%2e%2e%2f%2e%2e%2fetc", "etc"),
    ("https://h.org/x.ckpt.part", None),
    ("https://h.org/x.ckpt.lock", None),
    ("https://h.org/x.ckpt.verified", None),
    ("https://h.org/%00", None),
])
def test_cache_file_name_from_url(url, expected):
    sha = "0123456789abcdef" * 4
    name = file_name_for_url(url, sha)
    assert name == (expected or "0123456789abcdef.ckpt")
    assert "/" not in name and "\\" not in name and "?" not in name and "#" not in name


def test_long_file_name_is_cut_and_keeps_its_extension():
    name = file_name_for_url("https://h.org/" + "y" * 1000 + ".ckpt?q=" + "z" * 1000, "ab" * 32)
    assert len(name) == MAX_FILE_NAME and name.endswith(".ckpt")
    import re
    assert re.match(SAFE_NAME, name)


def test_download_by_url_with_a_long_query_keeps_the_query_out_of_the_cache(tmp_path, serve):
    server = serve(CONTENT)
    url = server.url + "?token=" + "q" * 5000 + "&x=%2F..%2F"
    manifest = asset_for_url(manifest_for(tmp_path, server), url, server.sha256)
    path = fetch(manifest, **FAST)
    assert path.name == "cnnctc.ckpt" and path.read_bytes() == CONTENT
    assert path.parent == load_manifest().cache_path().parent
    assert "token=" in server.paths[0]  # the query still reaches the server


@pytest.mark.parametrize("bad", ["https://[bad", "ftp://h.org/x.ckpt", "https:///x.ckpt"])
def test_fetch_checks_its_url_override_first(tmp_path, monkeypatch, bad):
    manifest = manifest_for(tmp_path, url="https://example.org/x.ckpt", sha256="ab" * 32)
    with pytest.raises(DownloadError) as info:
        fetch(manifest, url=bad, **FAST)
    assert "download URL" in one_line(info.value)
    monkeypatch.setenv("CNNCTC_ASSET_URL", bad)
    with pytest.raises(DownloadError, match="CNNCTC_ASSET_URL") as info:
        fetch(manifest, **FAST)
    one_line(info.value)
    assert not manifest.cache_path().parent.exists()  # nothing written


# --- 3. the cache folder -------------------------------------------------------------------

def test_cache_dir_that_is_a_file(tmp_path, serve):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server)
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_bytes(b"user's notes")
    before = tree_digest(tmp_path)
    with pytest.raises(DownloadError) as info:
        fetch(manifest, not_a_dir, **FAST)
    message = one_line(info.value)
    assert message == (f"cannot write to the cache {not_a_dir}: it is a file, not a folder; set CNNCTC_CACHE_DIR "
                       "or --cache-dir to a writable folder")
    assert tree_digest(tmp_path) == before
    assert server.log == []


def test_cache_dir_that_is_a_file_from_the_cli(tmp_path, serve):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server)
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_bytes(b"user's notes")
    before = tree_digest(tmp_path)
    env = subprocess_env(CNNCTC_MANIFEST=manifest.source, CNNCTC_CACHE_DIR=not_a_dir, CNNCTC_ALLOW_HTTP=1)
    message = cli_error(cli("download", env=env, timeout=60))
    assert "cannot write to the cache" in message and "CNNCTC_CACHE_DIR" in message
    assert tree_digest(tmp_path) == before


def test_something_else_at_the_cache_path(tmp_path, serve):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server)
    target = manifest.cache_path()
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    before = tree_digest(tmp_path)
    for force in (False, True):
        with pytest.raises(CnnctcError, match="a directory, not a file") as info:
            fetch(manifest, force=force, **FAST)
        one_line(info.value)
    assert tree_digest(tmp_path) == before and server.log == []


def test_fifo_at_the_cache_path_never_blocks(tmp_path, serve):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server)
    target = manifest.cache_path()
    target.parent.mkdir(parents=True)
    os.mkfifo(target)
    code = f"""
from cnnctc.download import fetch, check_cached, file_sha256, sha256_file, verify_file
from cnnctc.registry import load_manifest
m = load_manifest({str(manifest.source)!r})
call(fetch, m, allow_http=True, quiet=True)
call(check_cached, m)
call(file_sha256, m.cache_path())
call(sha256_file, m.cache_path())
call(verify_file, m.cache_path(), m.sha256)
"""
    for kind, message in api(code, timeout=60):
        assert kind == "CnnctcError" and "FIFO" in message, (kind, message)
        one_line(message)
    assert stat.S_ISFIFO(os.lstat(target).st_mode) and server.log == []


def test_dangling_symlink_counts_as_missing(tmp_path, serve):
    server = serve(CONTENT)
    manifest = manifest_for(tmp_path, server)
    target = manifest.cache_path()
    target.parent.mkdir(parents=True)
    target.symlink_to(target.with_name("gone.ckpt"))
    assert check_cached(manifest) == "missing"
    with pytest.raises(IntegrityError, match="no such file"):
        verify_file(target, manifest.sha256)
    assert fetch(manifest, **FAST).read_bytes() == CONTENT
    assert not target.is_symlink()


@pytest.mark.parametrize("uid", ["../../escaped/x", "mindspore/../../../escaped/x"])
def test_fetch_never_writes_outside_the_cache(tmp_path, serve, uid):
    server = serve(CONTENT)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ManifestError) as info:
        fetch(manifest_for(tmp_path, server).replace(uid=uid), cache, **FAST)
    one_line(info.value)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    assert server.log == []


def test_absolute_uid_never_writes_outside_the_cache(tmp_path, serve):
    server = serve(CONTENT)
    outside = tmp_path / "outside"
    with pytest.raises(ManifestError):
        fetch(manifest_for(tmp_path, server).replace(uid=f"{outside}/x"), tmp_path / "cache", **FAST)
    assert not outside.exists() and server.log == []


def test_inside_helper(tmp_path):
    root = tmp_path / "cache"
    assert is_inside(root, root / "a" / "b.ckpt")
    assert not is_inside(root, root)
    assert not is_inside(root, root / "a" / ".." / ".." / "x.ckpt")
    assert not is_inside(root, tmp_path / "cache2" / "x.ckpt")
    assert not is_inside(root, Path("/") / "x.ckpt")


# Permission cases: run as an unprivileged user (or as ourselves when not root).

FETCH_CODE = """
import sys
from cnnctc.download import fetch
from cnnctc.registry import load_manifest
call(fetch, load_manifest(sys.argv[1]), sys.argv[2], allow_http=True, quiet=True, retries=0)
"""


def test_read_only_cache_without_the_file(shared_tmp, serve, unprivileged):
    server = serve(CONTENT)
    manifest = manifest_for(shared_tmp, server)
    cache = shared_tmp / "cache"
    cache.mkdir()
    read_only(cache)
    [[kind, message]] = api(FETCH_CODE, manifest.source, cache, cwd=shared_tmp, user=unprivileged)
    assert kind == "DownloadError", message
    assert message.startswith(f"cannot write to the cache {cache}: Permission denied")
    assert message.endswith("set CNNCTC_CACHE_DIR or --cache-dir to a writable folder")
    assert list(cache.iterdir()) == [] and server.log == []


def test_verified_file_in_a_read_only_cache_still_loads(shared_tmp, serve, unprivileged):
    server = serve(CONTENT)
    manifest = manifest_for(shared_tmp, server)
    cache = shared_tmp / "cache"
    target = manifest.cache_path(cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(CONTENT)  # no stamp, no lock file: both would have to be written
    folders = [cache, *[p for p in cache.rglob("*") if p.is_dir()]]
    read_only(*folders)
    before = tree_digest(cache)
    env = subprocess_env(CNNCTC_MANIFEST=manifest.source, CNNCTC_CACHE_DIR=cache, CNNCTC_ALLOW_HTTP=1)
    proc = cli("download", env=env, timeout=60, cwd=shared_tmp, user=unprivileged)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target)
    assert tree_digest(cache) == before and server.log == []


def test_unreadable_cached_file(shared_tmp, serve, unprivileged):
    server = serve(CONTENT)
    manifest = manifest_for(shared_tmp, server)
    cache = shared_tmp / "cache"
    target = manifest.cache_path(cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(CONTENT)
    target.chmod(0)
    env = subprocess_env(CNNCTC_MANIFEST=manifest.source, CNNCTC_CACHE_DIR=cache, CNNCTC_ALLOW_HTTP=1)
    for args in (["download"], ["verify"], ["verify", str(target)]):
        message = cli_error(cli(*args, env=env, timeout=60, cwd=shared_tmp, user=unprivileged))
        assert str(target) in message and "Permission denied" in message, message
    target.chmod(0o644)
    assert target.read_bytes() == CONTENT and server.log == []


# --- 4. verifying ----------------------------------------------------------------------------

def test_verify_functions_on_a_directory(tmp_path):
    folder = tmp_path / "model.ckpt"
    folder.mkdir()
    for fn in (sha256_file, file_sha256, lambda p: verify_file(p, "ab" * 32)):
        with pytest.raises(CnnctcError, match="a directory, not a file") as info:
            fn(folder)
        assert str(folder) in one_line(info.value)


def test_verify_functions_on_a_device_and_a_missing_file(tmp_path):
    with pytest.raises(CnnctcError, match="character device"):
        file_sha256(os.devnull)
    with pytest.raises(CnnctcError, match="no such file"):
        sha256_file(tmp_path / "absent")
    with pytest.raises(CnnctcError, match="no such file"):
        file_sha256(tmp_path / "absent")


def test_cli_verify_on_a_directory_and_a_fifo(tmp_path):
    folder = tmp_path / "dir.ckpt"
    folder.mkdir()
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    for path in (folder, fifo):
        proc = cli("verify", str(path), timeout=30)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and str(path) in lines[0], proc.stderr


# --- 5. checkpoints --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """(folder, a good narrow checkpoint saved with cnnctc's save_checkpoint, its network's parameters)."""
    from cnnctc.checkpoint import save_checkpoint
    from cnnctc.network import CNNCTC
    net = CNNCTC(output_channel=32)
    folder = tmp_path_factory.mktemp("narrow32")
    path = save_checkpoint(net, folder / "good.ckpt", metadata={"alphabet": ALPHABET})
    return folder, path, {p.name: p.asnumpy() for p in net.get_parameters()}


def save_variant(folder, name, params, *, alphabet=ALPHABET, poison=()):
    """A checkpoint of ``params`` with the given entries set to NaN/Inf."""
    import mindspore as ms
    from cnnctc.checkpoint import save_checkpoint
    entries = []
    for i, (n, value) in enumerate(params.items()):
        value = value.copy()
        if n in poison:
            value.flat[0] = np.nan if i % 2 else np.inf
        entries.append({"name": n, "data": ms.Tensor(value)})
    return save_checkpoint(entries, folder / name, metadata={"alphabet": alphabet})


def fresh_net():
    from cnnctc.network import CNNCTC
    return CNNCTC(output_channel=32)


def test_nan_and_inf_weights_are_refused(narrow):
    from cnnctc.checkpoint import load_weights
    folder, _, params = narrow
    names = list(params)
    poisoned = [names[0], names[5], names[-1]]
    path = save_variant(folder, "nan.ckpt", params, poison=poisoned)
    with pytest.raises(CheckpointError) as info:
        load_weights(fresh_net(), path)
    assert one_line(info.value) == (f"{path}: 3 parameters hold NaN/Inf values (e.g. {poisoned[0]}); the checkpoint "
                                    "is damaged or came from a diverged run")
    one = save_variant(folder, "inf.ckpt", params, poison=[names[2]])
    with pytest.raises(CheckpointError, match=r"1 parameter holds NaN/Inf values \(e\.g\. " + names[2]):
        load_weights(fresh_net(), one)


def test_non_finite_weights_that_are_not_loaded_do_not_matter(narrow):
    from cnnctc.checkpoint import load_weights
    folder, _, params = narrow
    head = [n for n in params if n.startswith("Prediction.")]
    path = save_variant(folder, "nan-head.ckpt", params, poison=head)
    load_weights(fresh_net(), path, skip_prefixes=("Prediction.",))  # a new head is trained anyway


@pytest.mark.parametrize("alphabet, words", [("0123456789abcdefghijklmnopqrstuvwxya", "repeats 'a'"),
                                             ("", "is empty"),
                                             # symbols that would break TSV/JSON lines and terminals (a NUL
                                             # cannot be saved: MindSpore ends its strings there)
                                             ("0123456789abcdefghijklmnopqrstuvwxy\n", "holds control"),
                                             ("0123456789abcdefghijklmnopqrstuvwxy\t", "holds control"),
                                             ("0123456789abcdefghijklmnopqrstuvwxy\x1b", "holds control")])
def test_bad_saved_alphabet_is_refused(narrow, alphabet, words):
    from cnnctc.checkpoint import load_weights, read_checkpoint
    folder, _, params = narrow
    path = save_variant(folder, "alphabet.ckpt", params, alphabet=alphabet)
    for load in (lambda: load_weights(fresh_net(), path), lambda: read_checkpoint(path, weights_only=True)):
        with pytest.raises(CheckpointError, match=f"its saved alphabet {words}") as info:
            load()
        assert one_line(info.value).startswith(str(path))


def test_good_checkpoint_loads_exactly(narrow):
    from cnnctc.checkpoint import load_weights
    _, path, params = narrow
    net = fresh_net()
    assert load_weights(net, path) == {"alphabet": ALPHABET}
    assert all(np.array_equal(p.asnumpy(), params[p.name]) for p in net.get_parameters())


def test_read_checkpoint_on_bad_files(narrow, tmp_path):
    from cnnctc.checkpoint import read_checkpoint
    _, good, _ = narrow
    data = good.read_bytes()
    (tmp_path / "dir.ckpt").mkdir()
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("step,loss\n1,0.5\n")
    (tmp_path / "truncated.ckpt").write_bytes(data[:len(data) // 3])
    (tmp_path / "dangling.ckpt").symlink_to(tmp_path / "gone.ckpt")
    cases = {"dir.ckpt": "a directory, not a checkpoint file", "empty.ckpt": "the file is empty",
             "text.ckpt": "damaged, truncated or another kind of file",
             "truncated.ckpt": "damaged, truncated or another kind of file",
             "dangling.ckpt": "no such checkpoint file", "absent.ckpt": "no such checkpoint file"}
    before = tree_digest(tmp_path)
    for name, words in cases.items():
        with pytest.raises(CheckpointError, match=words) as info:
            read_checkpoint(tmp_path / name)
        assert one_line(info.value).startswith(str(tmp_path / name))
    assert tree_digest(tmp_path) == before


def test_read_checkpoint_on_a_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    code = f"""
from cnnctc.checkpoint import read_checkpoint, load_weights
from cnnctc.network import CNNCTC
call(read_checkpoint, {str(fifo)!r})
call(load_weights, CNNCTC(output_channel=32), {str(fifo)!r})
"""
    for kind, message in api(code, timeout=120):
        assert kind == "CheckpointError" and message == f"{fifo}: a FIFO (named pipe), not a checkpoint file"


@pytest.fixture(scope="module")
def denied(narrow, unprivileged):
    """An unprivileged user's read_checkpoint of a checkpoint it may not read, and slim into a folder it
    may not write, in one child (its MindSpore import is most of a child's time): (folder, [[kind,
    message] of each], tree_digest of the folder before, after)."""
    _, good, _ = narrow
    with shared_folder() as folder:
        secret = folder / "secret.ckpt"
        shutil.copyfile(good, secret)
        secret.chmod(0)
        src = folder / "src.ckpt"
        shutil.copyfile(good, src)
        src.chmod(0o644)
        out = folder / "out"
        out.mkdir()
        read_only(out)
        before = tree_digest(folder)
        code = ("import sys\nfrom cnnctc.checkpoint import read_checkpoint, slim\n"
                "call(read_checkpoint, sys.argv[1])\ncall(slim, sys.argv[2], sys.argv[3])")
        results = api(code, secret, src, out / "slim.ckpt", timeout=120, env=subprocess_env(HOME=folder), cwd=folder,
                      user=unprivileged)
        yield folder, results, before, tree_digest(folder)


def test_read_checkpoint_without_permission(denied):
    folder, [[kind, message], _], _, _ = denied
    path = folder / "secret.ckpt"
    assert kind == "CheckpointError" and message == f"{path}: cannot read the checkpoint: Permission denied"


def test_loading_prints_no_deprecation_warning(narrow):
    _, path, _ = narrow
    env = subprocess_env()
    env.pop("GLOG_v", None)  # MindSpore's default log level, at which its deprecation warnings show
    code = f"""
from cnnctc.checkpoint import load_weights, read_checkpoint
from cnnctc.network import CNNCTC
call(load_weights, CNNCTC(output_channel=32), read_checkpoint({str(path)!r}, weights_only=True))
"""
    proc = subprocess.run([sys.executable, "-c", API_PRELUDE + code + "\nprint(json.dumps(results))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])[0][0] == "ok"
    assert "deprecat" not in proc.stderr.lower(), proc.stderr[:2000]


# --- save_checkpoint and slim ---------------------------------------------------------------

def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp" in p.name)


def test_slim_refuses_bad_destinations(narrow, tmp_path):
    from cnnctc.checkpoint import slim
    _, good, _ = narrow
    src = tmp_path / "src.ckpt"
    shutil.copyfile(good, src)
    (tmp_path / "folder").mkdir()
    (tmp_path / "existing.ckpt").write_bytes(b"user's file")
    (tmp_path / "alias.ckpt").symlink_to(src)
    before = tree_digest(tmp_path)
    cases = {tmp_path / "folder": "it is a directory",
             tmp_path / "missing" / "x.ckpt": "does not exist",
             src: "is the source checkpoint itself",
             tmp_path / "alias.ckpt": "is the source checkpoint itself",
             tmp_path / "existing.ckpt": "already exists"}
    for dst, words in cases.items():
        with pytest.raises(CheckpointError, match=words) as info:
            slim(src, dst)
        one_line(info.value)
    assert tree_digest(tmp_path) == before
    kept, dropped = slim(src, tmp_path / "existing.ckpt", overwrite=True)
    assert (kept, dropped) == (len(list(fresh_net().get_parameters())) + 1, 0)
    assert tree_digest(src)[str(src)] == before[str(src)] and leftovers(tmp_path) == []
    from cnnctc.checkpoint import load_weights
    load_weights(fresh_net(), tmp_path / "existing.ckpt")


def test_save_checkpoint_to_a_directory_or_missing_folder(narrow, tmp_path):
    from cnnctc.checkpoint import save_checkpoint
    (tmp_path / "out").mkdir()
    for dst, words in ((tmp_path / "out", "it is a directory"), (tmp_path / "nope" / "x.ckpt", "does not exist")):
        with pytest.raises(CheckpointError, match=words) as info:
            save_checkpoint(fresh_net(), dst)
        one_line(info.value)
    assert not (tmp_path / "nope").exists() and leftovers(tmp_path / "out") == []


def test_cli_slim_to_a_directory(narrow, tmp_path):
    _, good, _ = narrow
    src = tmp_path / "src.ckpt"
    shutil.copyfile(good, src)
    (tmp_path / "folder").mkdir()
    before = tree_digest(tmp_path)
    proc = run_in_process("slim", src, tmp_path / "folder")  # the command's answer is the point, not a new process
    assert "Traceback" not in proc.stderr, proc.stderr
    message = cli_error(proc)
    assert message == f"cnnctc: error: cannot write {tmp_path / 'folder'}: it is a directory; name a file inside it"
    assert tree_digest(tmp_path) == before


SLIM_CODE = """
import sys
from cnnctc.checkpoint import slim
call(slim, sys.argv[1], sys.argv[2])
"""


def test_slim_without_space_leaves_nothing(narrow, tmp_path):
    _, good, _ = narrow
    src = tmp_path / "src.ckpt"
    shutil.copyfile(good, src)
    before = tree_digest(tmp_path)
    limit = src.stat().st_size // 4

    def small_disk():  # files may not grow past `limit`: writes fail as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-c", API_PRELUDE + SLIM_CODE + "\nprint(json.dumps(results))",
                           str(src), str(tmp_path / "slim.ckpt")], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120, preexec_fn=small_disk)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    [[kind, message]] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kind == "CheckpointError" and message == f"cannot write {tmp_path / 'slim.ckpt'}: File too large"
    assert "Failed to save" not in proc.stderr  # MindSpore's own complaint is not repeated
    assert tree_digest(tmp_path) == before  # no temporary file, no half-written checkpoint, source intact


def test_slim_into_a_read_only_folder(denied):
    folder, [_, [kind, message]], before, after = denied
    out = folder / "out"
    assert kind == "CheckpointError" and message == f"cannot write {out / 'slim.ckpt'}: Permission denied"
    assert after == before
