"""The error contract of fine-tuning: bad settings are refused before training, with one line.

Real CLI subprocesses on tiny real LMDBs: every bad path or setting ends with exit status 1 (2 for
usage errors), one ``cnnctc: error:`` line, no traceback, without starting to train, and the user's
files unchanged. A diverging run stops naming its step and writes no
non-finite checkpoint; Ctrl-C leaves a checkpoint that --resume continues.
"""
import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import as_foreground_job, run_in_process, subprocess_env
from cnnctc.data import make_lmdb
from cnnctc.errors import CnnctcError
from cnnctc.render import find_fonts, write_word_images

DIGITS = "0123456789"
ONE_FONT = (find_fonts() or [None])[:1]
WIDTH, BATCH = 16, 4  # the narrowest network and a tiny batch: the runs here prove behaviour, not accuracy
SMALL = ["--output-channel", str(WIDTH), "--batch-size", str(BATCH)]
TRAIN_IMAGES, VALID_IMAGES = 16, 8
HANG_SECONDS = 300  # only catches a hang; that a refusal came before training is checked on its log


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 training and 8 validation images of digit strings, as LMDBs, and a user's folder."""
    root = tmp_path_factory.mktemp("contract")
    write_word_images(root / "train_images", TRAIN_IMAGES, alphabet=DIGITS, fonts=ONE_FONT, seed=1)
    write_word_images(root / "valid_images", VALID_IMAGES, alphabet=DIGITS, fonts=ONE_FONT, seed=2)
    make_lmdb(root / "train_images", root / "train_images" / "labels.tsv", root / "train.lmdb")
    make_lmdb(root / "valid_images", root / "valid_images" / "labels.tsv", root / "valid.lmdb")
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file\n")
    (root / "a_file.txt").write_text("not a folder\n")
    return root


def digest(*paths):
    """SHA-256 over the names and bytes of every file under ``paths``."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def run_cli(*args, timeout=600, **env):
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(**env),
                         capture_output=True, text=True, timeout=timeout)
    run.seconds = time.monotonic() - started
    return run


@contextlib.contextmanager
def killed_if_left_running(process):
    """The child is killed (and reaped) if the block leaves it running, e.g. when an assertion fails."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def finetune_args(data, out, *extra, train=None, valid=None):
    return ["finetune", "--train", train or data / "train.lmdb", "--valid", valid or data / "valid.lmdb",
            "--out", out, "--pretrained", "none", "--alphabet", DIGITS, "--steps", "3", *SMALL, *extra]


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("cnnctc: error:")]


def assert_refused(run, code, pattern):
    assert run.returncode == code, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    # Refused before training: a run that trains logs "cnnctc: training ..." first (deterministic,
    # unlike a wall-time bound on a busy machine); the bound only catches a hang.
    assert "cnnctc: training " not in run.stderr, run.stderr[-3000:]
    assert run.seconds < HANG_SECONDS, f"refused only after {run.seconds:.0f} s: {run.stderr[-1000:]}"
    if code == 2:
        [line] = [line for line in run.stderr.splitlines() if "error:" in line]
    else:
        [line] = error_lines(run.stderr)
    assert pattern.lower() in line.lower(), line
    return line


def checkpoints(folder):
    return sorted(p.name for p in Path(folder).glob("cnnctc-*.ckpt"))


def no_temporary_files(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.startswith(".") or ".tmp" in p.name] == []


def all_finite(path):
    from cnnctc.checkpoint import read_checkpoint
    state = read_checkpoint(path)
    arrays = [v.asnumpy() for v in state.values() if not isinstance(v, str)]
    return all(np.isfinite(a).all() for a in arrays if np.issubdtype(a.dtype, np.floating))


USAGE_ERRORS = [
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--alphabet", ""], "--alphabet"),
    (["--alphabet", "01234567890"], "repeats '0'"),
    (["--output-channel", "1"], "multiple of 16"),
    (["--output-channel", "24"], "multiple of 16"),
    (["--output-channel", "16384"], "at most 1024"),   # aborted Python ("Fatal Python error") before
    (["--batch-size", "0"], "--batch-size"),
    (["--steps", "0"], "--steps"),
    (["--seed", "-1"], "--seed"),
    # Sizes bounded to what can run, refused as usage errors (they exited 1 from the run's checks before).
    (["--batch-size", "9999999999"], "--batch-size: must be at most 4096"),
    (["--steps", "99999999999"], "--steps: must be at most 10000000"),
    (["--epochs", "100000"], "--epochs: must be at most 10000"),
    (["--lr", "1e308"], "--lr: must be from 1.2e-38 to 1e+30"),
    (["--lr", "1e-300"], "--lr: must be from 1.2e-38 to 1e+30"),   # 0 in the float32 schedule
]


@pytest.mark.parametrize("extra,pattern", USAGE_ERRORS, ids=[" ".join(e) or "empty" for e, _ in USAGE_ERRORS])
def test_a_bad_setting_is_a_usage_error(data, tmp_path, capsys, extra, pattern):
    out = tmp_path / "out"
    before = digest(data / "train.lmdb", data / "valid.lmdb")
    # The later option wins in argparse: the bad value replaces the good one given before it. In-process
    # (argparse refuses before anything is imported), but for the width that once aborted Python.
    args = finetune_args(data, out, *extra)
    run = run_cli(*args) if "16384" in extra else InProcessRun(capsys, args)
    assert_refused(run, 2, pattern)
    assert not out.exists()
    assert digest(data / "train.lmdb", data / "valid.lmdb") == before


def test_epochs_out_of_range_is_a_usage_error(data, tmp_path):
    run = run_cli("finetune", "--train", data / "train.lmdb", "--out", tmp_path / "out", "--epochs", "0")
    assert_refused(run, 2, "--epochs")


# (case, its arguments given the data folder, a phrase of the error line, run as a real subprocess?): each
# exits 1 before training. The in-process ones go through the same parser and command (cnnctc.cli.main)
# without a new interpreter; two cases stay real processes, so that the process boundary is covered.
REFUSALS = [
    ("valid typo", lambda d: finetune_args(d, d / "new_out", valid=d / "vaild.lmdb"), "vaild.lmdb", False),
    ("valid is a folder of images", lambda d: finetune_args(d, d / "new_out", valid=d / "valid_images"),
     "valid_images", False),
    ("train missing", lambda d: finetune_args(d, d / "new_out", train=d / "nope.lmdb"), "nope.lmdb", False),
    ("train is a text file", lambda d: finetune_args(d, d / "new_out", train=d / "a_file.txt"), "a_file.txt", True),
    ("out is a file", lambda d: finetune_args(d, d / "a_file.txt"), "is a file", False),
    ("out under a file", lambda d: finetune_args(d, d / "a_file.txt" / "run"), "is a file", False),
    ("out is an LMDB", lambda d: finetune_args(d, d / "train.lmdb"), "LMDB dataset", False),
    ("batch larger than the data", lambda d: finetune_args(d, d / "new_out", "--batch-size", "64"),
     "fewer than one batch", False),
    ("alphabet that fits no label", lambda d: finetune_args(d, d / "new_out", "--alphabet", "abc"),
     "none of its samples", False),
    ("resume without checkpoints", lambda d: finetune_args(d, d / "mine", "--resume", d / "mine"),
     "no cnnctc-<step>.ckpt", False),
    ("resume a missing folder", lambda d: finetune_args(d, d / "new_out", "--resume", d / "gone"), "no such folder",
     False),
    ("pretrained missing", lambda d: finetune_args(d, d / "new_out", "--pretrained", d / "missing.ckpt"),
     "missing.ckpt", False),
    ("pretrained a folder", lambda d: finetune_args(d, d / "new_out", "--pretrained", d / "mine"), "is a folder",
     False),
    ("pretrained unknown uid", lambda d: finetune_args(d, d / "new_out", "--pretrained", "mindspore/9.9/cnnctc_x"),
     "mindspore/1.3/cnnctc_mjstiiit", True),
]


class InProcessRun:
    """``cnnctc.cli.main`` called in this process, shaped like a finished subprocess."""

    def __init__(self, capsys, args):
        from cnnctc.cli import main
        capsys.readouterr()
        started = time.monotonic()
        try:
            self.returncode = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors
            self.returncode = exc.code
        self.seconds = time.monotonic() - started
        self.stdout, self.stderr = capsys.readouterr()


@pytest.mark.parametrize("name,make_args,pattern,in_subprocess", REFUSALS, ids=[case[0] for case in REFUSALS])
def test_a_bad_path_or_setting_is_refused_before_training(data, capsys, name, make_args, pattern, in_subprocess):
    user_files = [data / "train.lmdb", data / "valid.lmdb", data / "mine", data / "a_file.txt"]
    before = digest(*user_files)
    run = run_cli(*make_args(data)) if in_subprocess else InProcessRun(capsys, make_args(data))
    line = assert_refused(run, 1, pattern)
    assert len(line) < 400, line
    assert digest(*user_files) == before, name
    assert not (data / "new_out").exists(), f"{name}: a refused run left its --out folder behind"
    assert sorted(p.name for p in (data / "mine").iterdir()) == ["notes.txt"]


def test_a_registered_uid_is_fetched_only_after_the_data_is_checked(data, tmp_path, capsys, monkeypatch):
    # --valid has a typo: it is reported, not the missing asset that a download would need first.
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    args = finetune_args(data, tmp_path / "out", "--pretrained", "mindspore/1.8/cnnctc_mjstiiit",
                         valid=data / "vaild.lmdb")
    assert_refused(InProcessRun(capsys, args), 1, "vaild.lmdb")
    # With good data the uid names the 1.8 asset (offline here: it is not in the cache). Its width comes from
    # the weights, so the small runs' --output-channel is left out (a different one is refused before).
    args = finetune_args(data, tmp_path / "out", "--pretrained", "mindspore/1.8/cnnctc_mjstiiit")
    at = args.index("--output-channel")
    del args[at:at + 2]
    line = assert_refused(run_cli(*args, CNNCTC_OFFLINE="1", CNNCTC_CACHE_DIR=tmp_path / "cache"), 1, "offline")
    assert "cnnctc_ascend_v180_mjstiiit_official_cv_acc84.0.ckpt" in line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finished_run(data):
    """A finished 4-step run (seed 2, saving every 2 steps), made in the folder of a run (seed 1) killed
    with kill -9 once it started training, where that run's half-written temporary files and a file of
    the user's were put. While it trains (held still by SIGSTOP, so the outcome does not depend on how
    fast either is), a third run (seed 3) tries the same folder. The one folder serves the killed-lock,
    the one-writer and the finished-run tests."""
    out = data / "finished"
    first = _start_finetune(data, out, 1, "--save-every", "1000")
    try:
        _wait_until_training(first)
    finally:
        first.kill()   # kill -9: no handler runs, the system releases the lock
        first.communicate()
    assert checkpoints(out) == []
    # What a run killed while saving leaves (save_checkpoint's temporary names): the next run removes it.
    (out / ".cnnctc-0000002.ckpt.4242.tmp.ckpt").write_bytes(b"half a checkpoint")
    (out / ".best.ckpt.4242.tmp.tmp").write_bytes(b"half of MindSpore's own temporary file")
    (out / "notes.txt").write_text("the user's own file\n")
    with killed_if_left_running(_start_finetune(data, out, 2, "--steps", "4", "--save-every", "2")) as running:
        _wait_until_training(running)
        running.send_signal(signal.SIGSTOP)
        saved_while_stopped = checkpoints(out)
        refused = run_cli(*finetune_args(data, out, "--seed", "3"))
        running.send_signal(signal.SIGCONT)
        stdout, stderr = running.communicate(timeout=300)
    assert running.returncode == 0, stderr[-3000:]
    return types.SimpleNamespace(out=out, refused=refused, stdout=stdout, saved_while_stopped=saved_while_stopped)


@pytest.fixture(scope="module")
def finished(finished_run):
    return finished_run.out


def test_a_finished_run_is_not_resumed_or_overwritten(data, finished, capsys):
    before = digest(finished, data / "train.lmdb")
    run = run_cli(*finetune_args(data, finished, "--resume", finished, "--steps", "8"))
    line = assert_refused(run, 1, "finished at step 4")
    assert f"--pretrained {finished / 'cnnctc-0000004.ckpt'}" in line and "--output-channel" not in line  # it reads it
    assert_refused(InProcessRun(capsys, finetune_args(data, finished, "--resume", finished)), 1, "finished at step 4")
    line = assert_refused(InProcessRun(capsys, finetune_args(data, finished)), 1,
                          "already holds a run, finished at step 4")
    assert f"start a new run from its weights: --pretrained {finished / 'cnnctc-0000004.ckpt'} --out NEW_DIR" in line
    assert digest(finished, data / "train.lmdb") == before


def test_a_diverging_run_stops_at_its_step_and_keeps_finite_checkpoints(data, tmp_path):
    out = tmp_path / "diverged"   # in-process: the command's line and files are the point, not a new process
    run = run_in_process(*finetune_args(data, out, "--lr", "1e6", "--steps", "60", "--save-every", "5",
                                        "--log-every", "1"))
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    [line] = error_lines(run.stderr)
    assert "diverged at step" in line and "lower --lr" in line
    step = int(line.split("diverged at step ")[1].split(":")[0])
    assert step < 60 and f"step {step - 1}/60" in run.stderr  # it stopped there, not at the end
    assert f"step {step}/60" not in run.stderr
    left = sorted(out.glob("*.ckpt"))
    assert left and all(all_finite(p) for p in left)
    assert f"cnnctc-{step:07d}.ckpt" not in checkpoints(out) and no_temporary_files(out)


def _ctrl_c_while_compiling(data, tmp_path, presses):
    """A finetune in ``tmp_path`` given Ctrl-C ``presses`` times a second into its first step, while
    MindSpore compiles the training graph (that takes several seconds): (exit status, stderr)."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "cnnctc", *map(str, finetune_args(data, out, "--steps", "30"))],
                               cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=as_foreground_job)
    with killed_if_left_running(process):
        lines = _wait_until_training(process)
        # Inside the compile (9-20 s here). A Ctrl-C that lands in one of MindSpore's callbacks into
        # Python is sometimes swallowed by the compile; the run must still stop once it returns.
        time.sleep(1)
        for _ in range(presses):
            process.send_signal(signal.SIGINT)
            time.sleep(0.05)
        _, rest = process.communicate(timeout=120)
    return process.returncode, "".join(lines) + rest


def test_ctrl_c_while_the_graph_compiles_is_one_line_and_leaves_nothing(data, tmp_path):
    """MindSpore's own trace of the interruption stays off stderr, and no IR dump appears in the
    working folder."""
    returncode, stderr = _ctrl_c_while_compiling(data, tmp_path, 1)
    assert returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "cnnctc: interrupted"
    assert all(line.startswith("cnnctc: ") for line in stderr.strip().splitlines()), stderr[-3000:]
    assert os.listdir(tmp_path) in (["run"], [])   # no rank_0/om/analyze_fail.ir


def test_ctrl_c_pressed_again_during_the_clean_up_stops_at_once_without_a_traceback(data, tmp_path):
    returncode, stderr = _ctrl_c_while_compiling(data, tmp_path, 3)
    assert returncode == 130, (returncode, stderr[-3000:])
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "cnnctc: interrupted"


# finetune in a child that, once its first periodic checkpoint is saved, waits for a line on stdin
# (Ctrl-C comes then, so where the run stops does not depend on how fast it trains).
PAUSED_AFTER_FIRST_SAVE = r"""
import sys
from cnnctc.training.store import CheckpointStore
real = CheckpointStore.save_step
def save_step(self, *args, **kwargs):
    path = real(self, *args, **kwargs)
    if not getattr(save_step, "done", False):
        save_step.done = True
        print("saved", flush=True)
        sys.stdin.readline()
    return path
CheckpointStore.save_step = save_step
from cnnctc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_leaves_a_checkpoint_that_resume_continues(data, finished, tmp_path, capsys):
    """Stopped right after its first epoch's last step, saved before that epoch's validation: the
    resumed run starts with the validation, not with an empty epoch (which crashed MindSpore's iterator)."""
    out = tmp_path / "interrupted"
    steps_per_epoch = TRAIN_IMAGES // BATCH
    # Start from the finished run's weights without --alphabet: the checkpoint's alphabet comes along.
    command = ["finetune", "--train", data / "train.lmdb", "--valid", data / "valid.lmdb", "--out", out,
               "--pretrained", finished / "cnnctc-0000004.ckpt", "--steps", "30", *SMALL,
               "--save-every", str(steps_per_epoch)]
    process = subprocess.Popen([sys.executable, "-c", PAUSED_AFTER_FIRST_SAVE, *map(str, command)],
                               env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=as_foreground_job)
    with killed_if_left_running(process):
        assert process.stdout.readline() == "saved\n", "no periodic checkpoint appeared"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert no_temporary_files(out)
    newest = checkpoints(out)[-1]
    interrupted_at = int(newest[len("cnnctc-"):-len(".ckpt")])
    assert interrupted_at == steps_per_epoch and all_finite(out / newest)
    assert f"the newest checkpoint is {out / newest}; run the same command with --resume {out}" in stderr

    # The same command again, without --resume: refused, saying to add it (--out stays).
    before = digest(out)
    line = assert_refused(InProcessRun(capsys, command), 1, "already holds the checkpoints of a run")
    assert f"the same command with --resume {out} added" in line
    # Resuming may repeat the run's settings but not change them.
    steps_changed = InProcessRun(capsys, [*command, "--resume", out, "--steps", "100"])
    line = assert_refused(steps_changed, 1, "planned for 30 steps")
    assert f"--pretrained {out / newest}" in line
    lr_changed = InProcessRun(capsys, [*command, "--resume", out, "--lr", "0.01"])
    assert_refused(lr_changed, 1, "--lr")
    assert digest(out) == before

    # Without --save-every: the run's own (every epoch) goes on, not the default 1000.
    without_save_every = command[:command.index("--save-every")] + command[command.index("--save-every") + 2:]
    resumed = run_in_process(*without_save_every, "--resume", out, "--log-every", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / newest} at step {interrupted_at} of 30" in resumed.stderr
    assert f"step {interrupted_at + 1}/30" in resumed.stderr and f"step {interrupted_at}/30" not in resumed.stderr
    from cnnctc.checkpoint import read_checkpoint
    assert f"step {steps_per_epoch} epoch 1: validation accuracy" in resumed.stderr   # the epoch's validation first
    assert checkpoints(out) == ["cnnctc-0000028.ckpt", "cnnctc-0000030.ckpt"]   # saved every 4 steps to the end
    assert all_finite(out / "cnnctc-0000030.ckpt")
    assert read_checkpoint(out / "cnnctc-0000030.ckpt")["alphabet"] == DIGITS


# -- the library refuses the same settings (no CLI in between) -------------------------------------------

CONFIG_ERRORS = [
    dict(lr=float("nan")), dict(lr=float("inf")), dict(lr=0.0), dict(lr=-1.0), dict(lr="0.1"),
    dict(alphabet=""), dict(alphabet="0120"), dict(alphabet="ab\n"), dict(output_channel=1),
    dict(output_channel=40), dict(output_channel=16384), dict(output_channel="64"), dict(batch_size=0), dict(batch_size=10 ** 6), dict(steps=0), dict(steps=10 ** 9),
    dict(epochs=0), dict(epochs=True), dict(seed=-1), dict(save_every=0), dict(log_every=0), dict(keep=0),
    dict(momentum=1.0), dict(warmup_start=0.0), dict(loss_scale=math.inf), dict(amp_level="O9"),
]


@pytest.mark.parametrize("changes", CONFIG_ERRORS, ids=[repr(c) for c in CONFIG_ERRORS])
def test_the_library_refuses_each_bad_setting(changes):
    from cnnctc.training import TrainConfig
    TrainConfig().check()  # the recipe itself is fine
    with pytest.raises(CnnctcError) as caught:
        TrainConfig(**changes).check()
    assert "\n" not in str(caught.value)


def test_finetune_refuses_an_empty_alphabet_before_anything_is_built(data, tmp_path):
    from cnnctc.training import TrainConfig, finetune
    with pytest.raises(CnnctcError, match="--alphabet is empty"):
        finetune(data / "train.lmdb", None, tmp_path / "out", pretrained=None, config=TrainConfig(alphabet=""))
    assert not (tmp_path / "out").exists()


def test_nan_weights_are_never_saved_and_a_save_leaves_another_writers_file_alone(data, tmp_path):
    """NaN weights stop the run and are never saved; made finite again, the same run's next save still
    leaves alone a file another writer put in its place (one training graph serves both)."""
    import mindspore as ms
    from cnnctc.errors import CheckpointError
    from cnnctc.training import DivergenceError, TrainConfig, Trainer
    config = TrainConfig(alphabet=DIGITS, steps=12, batch_size=BATCH, output_channel=WIDTH, save_every=2, log_every=100)

    def poison(step, loss):
        if step == 3:  # the head's weights: the next loss is NaN (and so are its gradients)
            head = next(p for p in trainer.net.get_parameters() if p.name == "Prediction.weight")
            kept["head"] = head.asnumpy()
            head.set_data(ms.Tensor(np.full(head.shape, np.nan, np.float32)))

    out, kept = tmp_path / "run", {}
    trainer = Trainer(data / "train.lmdb", data / "valid.lmdb", out, pretrained=None, config=config, on_step=poison)
    with pytest.raises(DivergenceError, match=r"diverged at step 4: the loss became nan; lower --lr \(it was "
                                              r"0.0005\).*newest: .*cnnctc-0000002.ckpt"):
        trainer.run()
    assert checkpoints(out) == ["cnnctc-0000002.ckpt"]
    assert all_finite(out / "cnnctc-0000002.ckpt") and no_temporary_files(out)
    # The weights themselves are checked too, and never saved.
    with pytest.raises(DivergenceError, match=r"the weights became NaN or infinite \(Prediction.weight\)"):
        trainer.check_weights()
    with pytest.raises(DivergenceError, match="Prediction.weight became NaN or infinite"):
        trainer.save_periodic()
    with pytest.raises(DivergenceError):
        trainer.save(out / "best.ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["cnnctc-0000002.ckpt"]

    # Another writer's file where this run's next checkpoint goes (step 4) is left alone.
    head = next(p for p in trainer.net.get_parameters() if p.name == "Prediction.weight")
    head.set_data(ms.Tensor(kept["head"]))
    theirs = b"another writer's file"
    (out / "cnnctc-0000004.ckpt").write_bytes(theirs)
    with pytest.raises(CheckpointError, match=r"cnnctc-0000004.ckpt: it already exists .*left alone"):
        trainer.save_periodic()
    assert (out / "cnnctc-0000004.ckpt").read_bytes() == theirs and no_temporary_files(out)


# -- one writer per run folder; checkpoints never replace another writer's file -------------------------

def _start_finetune(data, out, seed, *extra):
    command = [sys.executable, "-m", "cnnctc", *map(str, finetune_args(data, out, "--seed", seed, *extra))]
    return subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until_training(process):
    """Read the run's log until it starts training: it then holds its run folder's lock."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("cnnctc: training "):
            return lines
    raise AssertionError(f"the run ended before training: {''.join(lines)[-3000:]}")


def _seed_of(checkpoint):
    from cnnctc.checkpoint import read_checkpoint
    from cnnctc.training import TRAIN_STATE_KEY
    return json.loads(read_checkpoint(checkpoint)[TRAIN_STATE_KEY])["config"]["seed"]


def test_a_second_run_into_a_running_runs_folder_is_refused(finished_run):
    """Two real finetune processes on one --out: the second is refused in one line while the first runs,
    and the folder then holds the first's checkpoints alone."""
    out = finished_run.out
    assert finished_run.saved_while_stopped == []
    line = assert_refused(finished_run.refused, 1, f"--out {out} is in use by another finetune run")
    assert "choose another --out" in line and finished_run.refused.stdout == ""
    assert finished_run.stdout.splitlines()[0] == f"last checkpoint: {out / 'cnnctc-0000004.ckpt'} (step 4)"
    assert checkpoints(out) == ["cnnctc-0000002.ckpt", "cnnctc-0000004.ckpt"]
    assert _seed_of(out / "cnnctc-0000004.ckpt") == 2 and _seed_of(out / "best.ckpt") == 2 and no_temporary_files(out)


def test_a_killed_runs_lock_goes_with_it(finished):
    # The killed run (seed 1) and the run after it (seed 2) are the ``finished`` fixture's.
    assert _seed_of(finished / "cnnctc-0000004.ckpt") == 2 and _seed_of(finished / "best.ckpt") == 2
    assert sorted(p.name for p in finished.iterdir()) == ["best.ckpt", "cnnctc-0000002.ckpt", "cnnctc-0000004.ckpt",
                                                          "notes.txt"]


def test_checkpoints_get_the_mode_the_umask_gives(finished):
    import os
    mask = os.umask(0)
    os.umask(mask)
    for path in finished.glob("*.ckpt"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
