"""The bundled model cnnctc/synth-scene: trained only on synthetic scene words, shipped in the package,
honest about itself, taken like any registered model, and the way to read offline."""
import hashlib
import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_in_process, subprocess_env
from cnnctc.checkpoint import ALPHABET_KEY, read_checkpoint
from cnnctc.download import fetch
from cnnctc.errors import DownloadError, OfflineError
from cnnctc.registry import DEFAULT_MODEL, SCENE_MODEL, get_model

ENTRY = get_model(SCENE_MODEL)
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def cnnctc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_the_file_is_shipped_weights_only_within_twelve_mb_and_matches_its_manifest():
    path = ENTRY.bundled
    assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == ENTRY.manifest.sha256
    assert path.stat().st_size <= 12 * 2**20
    state = read_checkpoint(path)
    assert not [n for n in state if n.split(".")[0] in ("moment", "mean_square", "mean_grad", "global_step")]
    assert state[ALPHABET_KEY] == ENTRY.manifest.alphabet == ALPHABET
    width = ENTRY.manifest.network["output_channel"]
    assert tuple(state["Prediction.weight"].shape) == (37, width)


def test_card_manifest_and_info_say_what_it_was_trained_validated_and_measured_on():
    card = " ".join(ENTRY.card.read_text(encoding="utf-8").split())
    extra = ENTRY.manifest.extra
    assert ENTRY.manifest.sha256 in card and "benchmarks/train_synth_scene.py" in card
    assert "only on synthetic" in card and "never trained on" in card
    real = extra["real_word_accuracy"]
    assert f"{real['correct']} of {real['crops']}" in card and real["crops"] == 26
    for name, value in extra["rendered_word_accuracy"].items():
        assert f"{value:.2f}%" in card, name
    assert ENTRY.manifest.accuracy is None   # no benchmark accuracy is claimed
    run = cnnctc("info", "--model", SCENE_MODEL)
    assert run.returncode == 0, run.stderr
    assert "trained on:" in run.stdout and "synthetic" in run.stdout
    assert f"validated on: {real['correct']} of {real['crops']} real word crops" in run.stdout
    assert "measured:" in run.stdout


def test_a_failed_download_names_it_as_the_way_to_read_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    with pytest.raises(OfflineError) as caught:
        fetch(get_model().manifest, tmp_path / "cache")
    assert f"--model {SCENE_MODEL}" in str(caught.value) and "\n" not in str(caught.value)
    assert get_model().uid == DEFAULT_MODEL   # offered, never chosen silently


def test_finetune_without_the_hub_asset_names_it_as_finetune_takes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    assert cnnctc("render", tmp_path / "train.lmdb", "--style", "scene", "--count", 8,
                  "--alphabet", ALPHABET).returncode == 0
    run = run_in_process("finetune", "--train", tmp_path / "train.lmdb", "--out", tmp_path / "run", "--steps", 1,
                         "--batch-size", 4)
    [line] = [line for line in run.stderr.splitlines() if line.startswith("cnnctc: error:")]
    assert run.returncode == 1 and f"--pretrained {SCENE_MODEL}" in line and "--model" not in line


def test_it_reads_held_out_scene_words_and_fine_tunes_exports_and_evaluates_like_any_entry(tmp_path):
    """Scene words on seeds it was not trained on; finetune --pretrained, export and eval take it by name."""
    assert cnnctc("render", tmp_path / "test.lmdb", "--style", "scene", "--count", 60, "--seed", 4242,
                  "--alphabet", ALPHABET).returncode == 0
    run = cnnctc("eval", "--model", SCENE_MODEL, "--data", tmp_path / "test.lmdb", "--json", "-q")
    assert run.returncode == 0, run.stderr
    [row] = json.loads(run.stdout)["datasets"]
    assert row["kept"] == 60 and row["accuracy"] >= 50   # cnnctc/mini-synth reads a few of these at most
    mini = json.loads(cnnctc("eval", "--model", "cnnctc/mini-synth", "--data", tmp_path / "test.lmdb", "--json",
                             "-q").stdout)["datasets"][0]
    assert row["correct"] > 2 * mini["correct"]
    run = cnnctc("finetune", "--train", tmp_path / "test.lmdb", "--out", tmp_path / "run", "--pretrained",
                 SCENE_MODEL, "--steps", 2, "--batch-size", 8, "--lr", "1e-5")
    assert run.returncode == 0, run.stderr
    assert "initialised from" in run.stderr and "cnnctc_synth_scene.ckpt" in run.stderr
    run = cnnctc("export", "--model", SCENE_MODEL, "--format", "onnx", "--out", tmp_path / "scene.onnx")
    assert run.returncode == 0, run.stderr
    run = cnnctc("eval", "--checkpoint", tmp_path / "scene.onnx", "--data", tmp_path / "test.lmdb", "--json", "-q")
    assert run.returncode == 0 and json.loads(run.stdout)["datasets"][0]["correct"] == row["correct"]
    assert cnnctc("render", tmp_path / "calib.lmdb", "--style", "scene", "--count", 32, "--seed", 77).returncode == 0
    run = cnnctc("quantize", tmp_path / "scene.onnx", "--calib", tmp_path / "calib.lmdb", "--out",
                 tmp_path / "scene.int8.onnx")
    assert run.returncode == 0, run.stderr
    run = cnnctc("eval", "--checkpoint", tmp_path / "scene.int8.onnx", "--data", tmp_path / "test.lmdb", "--json", "-q")
    assert run.returncode == 0 and json.loads(run.stdout)["datasets"][0]["correct"] >= row["correct"] - 6


def test_list_shows_it_as_bundled():
    run = cnnctc("list")
    rows = {line.split()[0]: line.split() for line in run.stdout.splitlines()[1:]}
    assert rows[SCENE_MODEL][-1] == "bundled" and rows["cnnctc/mini-synth"][-1] == "bundled"
