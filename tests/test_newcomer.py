"""What a new user stumbled on (issue 29), each fixed where the user meets it: finetune reads the width
of the weights it starts from, a file given as --model is sent to --checkpoint, export says the onnx
extra is missing before MindSpore loads, and finetune --help tells more than one story."""
import subprocess
import sys

import pytest

from conftest import run_in_process, subprocess_env
from cnnctc.registry import BUNDLED_MODEL, get_model
from cnnctc.render import write_word_images

BUNDLED = get_model(BUNDLED_MODEL)
WIDTH = BUNDLED.manifest.network["output_channel"]  # 64: not the published 512


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    """A small LMDB of rendered words, and one of its images."""
    from cnnctc.data import make_lmdb
    root = tmp_path_factory.mktemp("words")
    labels = write_word_images(root / "images", 8, seed=3)
    make_lmdb(root / "images", labels, root / "train.lmdb")
    return root


def checked_plan(words, tmp_path, pretrained, **config):
    from cnnctc.training import TrainConfig
    from cnnctc.training.plan import RunPlan
    plan = RunPlan(words / "train.lmdb", None, tmp_path / "run", pretrained=pretrained,
                   config=TrainConfig(steps=1, batch_size=4, **config))
    plan.check()
    plan.train_set.close()
    return plan


@pytest.mark.parametrize("source", ["uid", "file"])
def test_finetune_takes_the_width_of_the_weights_it_starts_from(words, tmp_path, monkeypatch, source):
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")   # the bundled model needs no network
    pretrained = BUNDLED_MODEL if source == "uid" else str(BUNDLED.bundled)
    assert checked_plan(words, tmp_path, pretrained).config.output_channel == WIDTH
    assert checked_plan(words, tmp_path, pretrained, output_channel=WIDTH).config.output_channel == WIDTH
    # From random weights the width is the model's: the published 512 for the hub model.
    assert checked_plan(words, tmp_path, "none").config.output_channel == 512
    assert checked_plan(words, tmp_path, "none", output_channel=32).config.output_channel == 32


def test_finetune_refuses_a_width_other_than_the_pretrained_weights(words, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    for pretrained in (BUNDLED_MODEL, str(BUNDLED.bundled)):
        run = run_in_process("finetune", "--train", words / "train.lmdb", "--out", tmp_path / "run", "--pretrained",
                             pretrained, "--output-channel", 128, "--steps", 1, "--batch-size", 4)
        [line] = [line for line in run.stderr.splitlines() if line.startswith("cnnctc: error:")]
        assert run.returncode == 1 and not (tmp_path / "run").exists()
        assert f"--output-channel 128, but --pretrained {pretrained} is {WIDTH} channels wide" in line
        assert "leave --output-channel out" in line


def test_finetune_help_tells_every_way_to_start():
    run = run_in_process("finetune", "--help")
    text = " ".join(run.stdout.split())
    assert run.returncode == 0
    for story in ("from the hub weights (default)", "cnnctc/synth-scene", "cnnctc/mini-synth", "a checkpoint of yours",
                  "random weights", "your own alphabet"):
        assert story in text, story
    assert "--pretrained cnnctc/synth-scene --steps 300" in text   # no --output-channel needed any more
    assert "default: the --pretrained weights' width" in text


@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_a_file_given_as_model_is_sent_to_checkpoint(words, tmp_path, command):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read")
    args = {"predict": ["predict", words / "images" / "00000.png"],
            "eval": ["eval", "--data", words / "train.lmdb"],
            "export": ["export", "--format", "mindir", "--out", tmp_path / "out.mindir"]}[command]
    run = run_in_process(*args, "--model", model)
    [line] = [line for line in run.stderr.splitlines() if line.startswith("cnnctc: error:")]
    assert run.returncode == 1
    assert f"--model {model} is a file" in line and f"as --checkpoint {model}" in line and "cnnctc list" in line


def test_a_registered_uid_is_not_taken_for_a_file(tmp_path, monkeypatch):
    from cnnctc.cli.reading import model_file_problem
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cnnctc").mkdir()
    (tmp_path / "cnnctc" / "mini-synth").write_text("a file that happens to have a uid's name")
    assert model_file_problem(BUNDLED_MODEL) is None
    assert model_file_problem("unknown/model/uid") is None   # the registry's own error names the known ones
    assert "is a folder" in model_file_problem("cnnctc")


EXPORT_WITHOUT_ONNX = r"""
import sys
sys.modules["onnx"] = None   # as if the onnx extra were not installed
from cnnctc.cli import main
status = main(["export", "--model", "cnnctc/mini-synth", "--format", "onnx", "--out", sys.argv[1]])
print("mindspore imported" if "mindspore" in sys.modules else "mindspore not imported")
sys.exit(status)
"""


def test_export_says_the_onnx_extra_is_missing_before_mindspore_loads(tmp_path):
    run = subprocess.run([sys.executable, "-c", EXPORT_WITHOUT_ONNX, str(tmp_path / "m.onnx")],
                         env=subprocess_env(CNNCTC_OFFLINE=1), capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines() == ["cnnctc: error: ONNX export needs the onnx package, which is not "
                                               "installed; pip install 'cnnctc[onnx]'"]
    assert run.stdout.strip() == "mindspore not imported"
    assert not (tmp_path / "m.onnx").exists()
