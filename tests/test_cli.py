"""The `cnnctc` command as a user runs it (a real subprocess, a real local HTTP server)."""
import hashlib
import os
import subprocess
import sys

import pytest

from conftest import subprocess_env, write_manifest

CONTENT = os.urandom(600_000)


def cnnctc(*args, **env):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def served(tmp_path, serve):
    server = serve(CONTENT)
    manifest = write_manifest(tmp_path / "m.json", url=server.url, sha256=server.sha256, file_name="asset.ckpt")
    return server, manifest


def test_download_then_verify_then_info(tmp_path, served):
    server, manifest = served
    cache = tmp_path / "c"
    run = cnnctc("--manifest", manifest, "download", "--cache-dir", cache, "--allow-http", "--quiet")
    assert run.returncode == 0, run.stderr
    path = cache / "mindspore" / "1.3" / "asset.ckpt"
    assert run.stdout.strip() == str(path) and path.read_bytes() == CONTENT
    run = cnnctc("--manifest", manifest, "verify", path)
    assert run.returncode == 0 and server.sha256 in run.stdout
    run = cnnctc("--manifest", manifest, "info", "--cache-dir", cache)
    assert run.returncode == 0 and "cache state:  verified" in run.stdout and "blank = 36" in run.stdout
    path.write_bytes(CONTENT[:-1] + b"!")
    run = cnnctc("--manifest", manifest, "verify", "--cache-dir", cache)
    assert run.returncode == 1
    assert server.sha256 in run.stderr and hashlib.sha256(path.read_bytes()).hexdigest() in run.stderr
    run = cnnctc("--manifest", manifest, "info", "--cache-dir", cache)
    assert "cache state:  corrupt" in run.stdout


def test_download_of_another_file_by_url_and_sha(tmp_path, serve):
    other = serve(b"another checkpoint" * 1000)
    run = cnnctc("download", "--url", other.url, "--sha256", other.sha256, "--allow-http", "--quiet",
                 CNNCTC_CACHE_DIR=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "mindspore" / "1.3" / "cnnctc.ckpt")


def test_download_errors_are_one_line(tmp_path, served):
    server, manifest = served
    run = cnnctc("--manifest", manifest, "download", "--quiet", CNNCTC_CACHE_DIR=tmp_path)
    assert run.returncode == 1 and "refusing plain http://" in run.stderr
    run = cnnctc("--manifest", manifest, "download", "--quiet", CNNCTC_CACHE_DIR=tmp_path, CNNCTC_OFFLINE=1)
    assert run.returncode == 1 and run.stderr.startswith("cnnctc: error: offline")
    assert len(run.stderr.strip().splitlines()) == 1
    assert server.log == []
    run = cnnctc("--manifest", tmp_path / "missing.json", "verify")
    assert run.returncode == 1 and "manifest not found" in run.stderr


@pytest.mark.parametrize("command", ["info", "list", "download", "verify", "hub-install", "slim", "predict", "render",
                                     "make-lmdb", "finetune", "eval", "export", "quantize"])
def test_help_explains_each_command(command):
    run = cnnctc(command, "--help")
    assert run.returncode == 0 and "usage: cnnctc " + command in run.stdout


def test_progress_bar_on_a_terminal_only(tmp_path, serve):
    import fcntl
    import pty
    import struct
    import termios
    server = serve(CONTENT * 4, throttle=0.01, chunk=16 * 1024)
    manifest = write_manifest(tmp_path / "m.json", url=server.url, sha256=server.sha256, file_name="asset.ckpt")
    args = [sys.executable, "-m", "cnnctc", "--manifest", str(manifest), "download", "--allow-http"]
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen(args, env=subprocess_env(CNNCTC_CACHE_DIR=tmp_path / "a"), stdout=subprocess.PIPE,
                            stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(controller)
    assert proc.returncode == 0
    assert b"asset.ckpt" in seen and b"100%" in seen and b"/s" in seen  # name, progress, rate
    piped = cnnctc("--manifest", manifest, "download", "--allow-http", CNNCTC_CACHE_DIR=tmp_path / "b")
    assert piped.returncode == 0 and "%" not in piped.stderr and "downloading" in piped.stderr
    quiet = cnnctc("--manifest", manifest, "download", "--allow-http", "--quiet", CNNCTC_CACHE_DIR=tmp_path / "c")
    assert quiet.returncode == 0 and quiet.stderr == ""
