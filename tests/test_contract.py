"""The error contract walked over every command: careless input gets one line (exit 1, usage 2),
no traceback, no signal death, no hang, and the user's files hash the same before and after.

The deeper cases of each class live beside their code (test_contract_inputs, _assets, _training,
test_decoding_cli); this table makes sure no command is left out.

Each command that reaches MindSpore has one case run as a real subprocess (where a signal death
or a hang would show); the others call ``cnnctc.cli.main`` in this process, with the same
arguments, environment and folder (a native crash there still fails the run: it takes the worker
down). The in-process cases whose point is the command line's own checks also check that they never
import MindSpore.
"""
import hashlib
import os
import stat
import subprocess
import sys

import pytest

from conftest import subprocess_env

COMMANDS = ["info", "list", "download", "verify", "hub-install", "slim", "predict", "render", "make-lmdb",
            "finetune", "eval", "export", "quantize"]


def snapshot(root):
    """{path: sha256 or kind} of everything under ``root``, opening regular files only."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                with open(path, "rb") as f:
                    found[path] = hashlib.sha256(f.read()).hexdigest()
            else:
                found[path] = "dir" if stat.S_ISDIR(mode) else "other"
    return found


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's folder: images with labels, an LMDB, a checkpoint, junk, a FIFO, a file, a folder."""
    import shutil
    from cnnctc.data import make_lmdb
    from cnnctc.registry import get_model
    from cnnctc.render import write_word_images
    root = tmp_path_factory.mktemp("user")
    write_word_images(root / "images", 6, alphabet="0123456789", seed=1)
    make_lmdb(root / "images", root / "images" / "labels.tsv", root / "data.lmdb")
    shutil.copyfile(get_model("cnnctc/mini-synth").bundled, root / "net.ckpt")  # a real checkpoint, no MindSpore
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    (root / "notes.txt").write_text("my notes")
    (root / "old.onnx").write_bytes(b"the user's earlier export")
    (root / "dir.ckpt").mkdir()
    os.mkfifo(root / "fifo")
    return root


SUBPROCESS, IN_PROCESS, IN_PROCESS_MINDSPORE = "subprocess", "in-process", "in-process, reaching MindSpore"

# (command line with {u} for the user's folder, expected exit status, text the error must hold, how it runs)
CASES = [
    ("info --device-target TPU", 2, "unknown device target", IN_PROCESS),
    ("info --model mindspore/0.1/nothing", 1, "known: mindspore/1.3/cnnctc_mjstiiit", IN_PROCESS),
    ("list --cache-dir {u}/notes.txt", 0, "", IN_PROCESS),
    ("download --cache-dir {u}/notes.txt", 1, "cache", IN_PROCESS),
    ("download --url https://[bad --sha256 " + "a" * 64, 1, "cannot be parsed", IN_PROCESS),
    ("download --url https://example.invalid/x.ckpt --sha256 xyz", 1, "64 hexadecimal digits", IN_PROCESS),
    ("download --url https://example.invalid/x.ckpt --sha256 " + "a" * 64 + " --cache-dir {u}/c", 1, "CNNCTC_OFFLINE", IN_PROCESS),
    ("verify {u}/dir.ckpt", 1, "dir.ckpt", IN_PROCESS),
    ("verify {u}/nothing-here.ckpt", 1, "no such file", IN_PROCESS),
    ("verify {u}/fifo", 1, "fifo", IN_PROCESS),
    ("verify --model mindspore/1.8/cnnctc_mjstiiit {u}/net.ckpt", 1, "93bf15cb", IN_PROCESS),
    ("hub-install --hub-dir {u}/notes.txt", 1, "is a file", IN_PROCESS),
    ("hub-install --hub-dir /proc/cnnctc-hub", 1, "cannot write", IN_PROCESS),
    ("slim {u}/empty.png {u}/out.ckpt", 1, "empty.png", IN_PROCESS_MINDSPORE),
    ("slim {u}/net.ckpt {u}/dir.ckpt", 1, "dir.ckpt", IN_PROCESS_MINDSPORE),
    ("slim {u}/net.ckpt {u}/notes.txt", 1, "--overwrite", IN_PROCESS_MINDSPORE),
    ("slim {u}/net.ckpt {u}/net.ckpt", 1, "net.ckpt", SUBPROCESS),
    ("predict --checkpoint {u}/empty.png {u}/text.png", 1, "empty.png", IN_PROCESS_MINDSPORE),
    ("predict --checkpoint {u}/dir.ckpt {u}/images", 1, "dir.ckpt", SUBPROCESS),
    ("predict --checkpoint {u}/net.ckpt --lexicon {u}/fifo {u}/images", 1, "regular file", IN_PROCESS),
    ("predict --checkpoint {u}/net.ckpt --batch-size 0 {u}/images", 2, "usage:", IN_PROCESS),
    ("predict --checkpoint {u}/net.ckpt --device-target TPU {u}/images", 2, "unknown device target", IN_PROCESS),
    ("render {u}/images --count 2", 1, "images", IN_PROCESS),
    ("render {u}/notes.txt --count 2", 1, "notes.txt", IN_PROCESS),
    ("render {u}/new --alphabet=", 2, "alphabet", IN_PROCESS),
    ("render {u}/new --words two\nlines", 1, "newline", IN_PROCESS),
    ("make-lmdb {u}/nothing {u}/notes.txt {u}/out.lmdb", 1, "nothing", IN_PROCESS),
    ("make-lmdb {u}/images {u}/images/labels.tsv {u}/images --overwrite", 1, "images", IN_PROCESS),
    ("make-lmdb {u}/images {u}/images/labels.tsv {u} --overwrite", 1, "", IN_PROCESS),
    ("make-lmdb {u}/images {u}/fifo {u}/out.lmdb", 1, "fifo", IN_PROCESS),
    ("finetune --train {u}/data.lmdb --out {u}/run --output-channel 1", 2, "multiple of 16", SUBPROCESS),
    ("finetune --train {u}/data.lmdb --out {u}/run --lr nan", 2, "finite", IN_PROCESS),
    ("finetune --train {u}/data.lmdb --valid {u}/typo.lmdb --out {u}/run --pretrained none", 1, "typo.lmdb", IN_PROCESS_MINDSPORE),
    ("finetune --train {u}/data.lmdb --out {u}/notes.txt --pretrained none", 1, "notes.txt", IN_PROCESS_MINDSPORE),
    ("eval --checkpoint {u}/dir.ckpt --data {u}/notes.txt", 1, "", SUBPROCESS),
    ("eval --checkpoint {u}/net.ckpt --data {u}/notes.txt", 1, "notes.txt", IN_PROCESS_MINDSPORE),
    ("eval --checkpoint {u}/net.ckpt --data {u}/data.lmdb --max-distance 2", 2, "lexicon", IN_PROCESS),
    ("export --checkpoint {u}/net.ckpt --format air --out {u}/m.air", 1, "Ascend", SUBPROCESS),
    ("export --checkpoint {u}/net.ckpt --format onnx --out {u}/old.onnx", 1, "--overwrite", IN_PROCESS),
    ("export --checkpoint {u}/net.ckpt --format onnx --out {u}/notes.txt", 1, ".onnx", IN_PROCESS),
    ("export --checkpoint {u}/dir.ckpt --format onnx --out {u}/m.onnx", 1, "dir.ckpt", IN_PROCESS_MINDSPORE),
    ("quantize {u}/net.ckpt --calib {u}/images --out {u}/m.int8.onnx", 1, "net.ckpt", IN_PROCESS),
    ("quantize {u}/text.png --calib {u}/images --out {u}/m.int8.onnx", 1, "text.png", IN_PROCESS),
]


def test_the_table_covers_every_command():
    from cnnctc.cli import build_parser
    parser = build_parser()
    names = set(next(a for a in parser._actions if hasattr(a, "choices") and a.choices).choices)
    assert names == set(COMMANDS)
    assert {case[0].split()[0] for case in CASES} == set(COMMANDS)


class InProcessRun:
    """``cnnctc.cli.main(argv)`` in this process, shaped like a finished subprocess."""

    def __init__(self, argv, capsys, monkeypatch, cwd, cache):
        from cnnctc.cli import run_captured
        monkeypatch.setenv("CNNCTC_CACHE_DIR", str(cache))
        monkeypatch.setenv("CNNCTC_OFFLINE", "1")
        monkeypatch.chdir(cwd)
        self.returncode, self.stdout, self.stderr = run_captured(argv)   # log lines included


# The cases that import MindSpore in this process come last, so that the others' check means something.
ORDERED = sorted(CASES, key=lambda case: case[3] == IN_PROCESS_MINDSPORE)


@pytest.mark.parametrize("line, status, text, how", ORDERED, ids=[c[0].split(" {u}")[0][:60] for c in ORDERED])
def test_careless_input_gets_one_clear_line(user, tmp_path, capsys, monkeypatch, line, status, text, how):
    argv = [part.replace("{u}", str(user)) for part in line.split(" ")]
    argv = [a.replace("\\n", "\n") for a in argv]
    before = snapshot(user)
    if how == SUBPROCESS:
        run = subprocess.run([sys.executable, "-m", "cnnctc", *argv], env=subprocess_env(CNNCTC_CACHE_DIR=tmp_path,
                             CNNCTC_OFFLINE=1), capture_output=True, text=True, timeout=180,
                             stdin=subprocess.DEVNULL, cwd=tmp_path)
    else:
        had_mindspore = "mindspore" in sys.modules  # another test in this process may have imported it
        run = InProcessRun(argv, capsys, monkeypatch, cwd=tmp_path, cache=tmp_path)
        if how == IN_PROCESS:
            assert had_mindspore or "mindspore" not in sys.modules, "this case reaches MindSpore: mark it so"
    assert run.returncode == status, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if status:
        errors = [l for l in run.stderr.splitlines() if l.startswith("cnnctc: error:")]
        assert status == 2 or len(errors) == 1, run.stderr
        assert text in run.stderr, run.stderr
    after = snapshot(user)
    changed = {p for p in before if after.get(p) != before[p]}
    assert not changed, f"the user's files changed: {sorted(changed)}"


def test_a_folder_given_as_a_checkpoint_is_never_advised_away(user, tmp_path, capsys, monkeypatch):
    """The user's own folder named where a file belongs: the line asks for the file, it does not tell
    the user to remove the folder."""
    run = InProcessRun(["verify", str(user / "dir.ckpt")], capsys, monkeypatch, cwd=tmp_path, cache=tmp_path)
    assert run.returncode == 1
    assert "a directory, not a file; name the file itself" in run.stderr and "remove it" not in run.stderr
