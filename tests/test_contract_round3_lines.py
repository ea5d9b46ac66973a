"""The contract, round three: lines that were true but misleading now name what to do.

Real processes, a real full disk (a small tmpfs, where this machine lets the tests mount one), a
data-loading worker really killed, real files in the way.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import run_in_process, subprocess_env
from cnnctc.registry import get_model
from cnnctc.runtime import cpu_only

MINI = get_model("cnnctc/mini-synth")


def cnnctc(*args, timeout=600, **env):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def error_line(run):
    lines = run.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("cnnctc: error: "), run.stderr
    assert "Traceback" not in run.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    """Word images with a labels file, and an LMDB of them."""
    from cnnctc.data import make_lmdb
    root = tmp_path_factory.mktemp("words")
    lines = []
    for i, word in enumerate(("cat", "road", "42", "lamp", "zebra", "ocr", "q9", "mind")):
        image = Image.new("RGB", (100, 32), "white")
        ImageDraw.Draw(image).text((8, 10), word, fill="black")
        image.save(root / f"{i}.png")
        lines.append(f"{i}.png\t{word}\n")
    (root / "labels.tsv").write_text("".join(lines))
    make_lmdb(root, root / "labels.tsv", root.parent / "train.lmdb")
    return root


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (an export of the bundled model is 2.8 MB), or a skip where it cannot be mounted."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                              text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


needs_auto_onnx = pytest.mark.skipif(not cpu_only(), reason="a GPU or Ascend device is here: auto runs MindSpore")


# --- the runtime's ONNX cache -------------------------------------------------------------------

@needs_auto_onnx
def test_a_full_cache_disk_during_predict_names_the_cache_setting_not_an_out_option(words, small_disk):
    image = words / "0.png"
    run = cnnctc("predict", "--model", "cnnctc/mini-synth", "--runtime", "onnxruntime", image,
                 CNNCTC_CACHE_DIR=small_disk)
    line = error_line(run)
    assert run.returncode == 1 and "the disk of the ONNX export cache is full" in line
    assert "CNNCTC_CACHE_DIR" in line and "--out" not in line
    # auto reads on MindSpore instead, and its log line says the same
    run = cnnctc("predict", "--model", "cnnctc/mini-synth", image, CNNCTC_CACHE_DIR=small_disk)
    assert run.returncode == 0 and run.stdout.startswith(f"{image}: ")
    [fallback] = [line for line in run.stderr.splitlines() if "running on MindSpore" in line]
    assert "CNNCTC_CACHE_DIR" in fallback and "--out" not in fallback


@needs_auto_onnx
def test_a_folder_where_the_exports_stamp_goes_is_replaced_when_empty_and_named_when_not(words, tmp_path):
    image, cache = words / "0.png", tmp_path / "cache"
    assert cnnctc("predict", "--model", "cnnctc/mini-synth", image, CNNCTC_CACHE_DIR=cache).returncode == 0
    [export] = (cache / "cnnctc-onnx").glob("*.onnx")
    stamp = export.with_name(export.name + ".verified")
    stamp.unlink()
    stamp.mkdir()   # made by mistake: holds nothing
    run = cnnctc("predict", "--model", "cnnctc/mini-synth", image, CNNCTC_CACHE_DIR=cache)
    assert run.returncode == 0 and stamp.is_file() and "cannot be used" not in run.stderr
    run = cnnctc("predict", "--model", "cnnctc/mini-synth", image, CNNCTC_CACHE_DIR=cache)
    assert run.returncode == 0 and "exporting" not in run.stderr and "MindSpore" not in run.stderr   # used as is
    stamp.unlink()
    stamp.mkdir()
    (stamp / "mine.txt").write_text("a file of the user's")
    run = cnnctc("predict", "--model", "cnnctc/mini-synth", image, CNNCTC_CACHE_DIR=cache)
    assert run.returncode == 0 and "exporting" not in run.stderr   # no export made in vain
    [fallback] = [line for line in run.stderr.splitlines() if "running on MindSpore" in line]
    assert f"{stamp}: a folder" in fallback and "move the folder away" in fallback
    run = cnnctc("predict", "--model", "cnnctc/mini-synth", "--runtime", "onnxruntime", image, CNNCTC_CACHE_DIR=cache)
    line = error_line(run)
    assert run.returncode == 1 and f"{stamp}: a folder" in line and "just written" not in line
    assert (stamp / "mine.txt").read_text() == "a file of the user's"


def test_a_contradiction_in_the_description_names_out_and_the_manifest_never_a_temporary_file(tmp_path):
    manifest = MINI.manifest.to_dict()
    manifest["uid"], manifest["preprocess"]["mean"] = "me/mine", [100.0, 100.0, 100.0]   # its weights, other means
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    out = tmp_path / "x.onnx"
    run = cnnctc("export", "--format", "onnx", "--checkpoint", MINI.bundled, "--manifest", tmp_path / "m.json",
                 "--out", out)
    line = error_line(run)
    assert run.returncode == 1 and line.startswith(f"cnnctc: error: {out}: the manifest {tmp_path / 'm.json'}: ")
    assert "another preprocessing" in line and "correct the manifest" in line
    assert "export it again" not in line and "cnnctc-tmp" not in line and "final.onnx" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


# --- finetune ------------------------------------------------------------------------------------

def _children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append((int(entry.name), cmdline))
    return found


def test_a_loader_worker_killed_before_the_first_checkpoint_is_named_and_resume_is_not_offered(words, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cnnctc", "finetune", "--train", words.parent / "train.lmdb",
                             "--out", out, "--pretrained", "cnnctc/mini-synth", "--steps", "100000",
                             "--batch-size", "4", "--workers", "2"], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, killed = time.monotonic() + 300, None
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            workers = [pid for pid, cmd in _children(proc.pid) if "cnnctc.batches" in cmd]
            if workers:
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        assert killed is not None, "no data-loading worker started"
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    line = err.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert line.startswith("cnnctc: error: data-loading worker ") and f"of 2 (pid {killed}) ended (SIGKILL)" in line
    assert f"{words.parent / 'train.lmdb'} image-" in line   # what it was reading
    assert "--resume" not in line and "no checkpoint was saved yet" in line and "run the same command again" in line
    assert not out.exists()   # a run that saved nothing leaves nothing


def test_a_best_ckpt_that_is_a_text_file_is_not_called_a_run(words, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.ckpt").write_text("my notes\n")
    train = words.parent / "train.lmdb"
    run = cnnctc("finetune", "--train", train, "--out", out, "--pretrained", "cnnctc/mini-synth", "--steps", "2")
    line = error_line(run)
    assert run.returncode == 1 and "holds the checkpoints" not in line and "--resume" not in line
    assert f"--out {out} holds a best.ckpt that is a text file" in line and "move best.ckpt away" in line
    run = cnnctc("finetune", "--train", train, "--out", out, "--pretrained", "cnnctc/mini-synth", "--steps", "2",
                 "--resume", out)
    line = error_line(run)
    assert run.returncode == 1 and "--pretrained" not in line and "a text file, not a checkpoint" in line
    assert (out / "best.ckpt").read_text() == "my notes\n"


# --- hub-install ----------------------------------------------------------------------------------

def test_hub_install_into_a_dangling_symlink_says_so_not_file_exists(tmp_path):
    link = tmp_path / "hub"
    link.symlink_to(tmp_path / "nowhere")
    run = run_in_process("hub-install", "--hub-dir", link)
    line = error_line(run)
    assert run.returncode == 1 and "File exists" not in line
    assert f"{link} is a symbolic link to {tmp_path / 'nowhere'}, which does not exist" in line
