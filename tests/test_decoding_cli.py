"""The decoder as a parameter of predict and eval, as a user runs them (real network, real files).

The network is exported once to ONNX: the CLI runs it on onnxruntime without importing MindSpore (as
``--runtime auto`` does for a .ckpt on a CPU, after exporting it again in every run). One test keeps
the .ckpt as the user gives it.
"""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import subprocess_env
from cnnctc.data import make_lmdb
from cnnctc.render import write_word_images

WORDS = ["cat", "dog", "sun", "tree", "river", "stone"]


def cnnctc(*args, timeout=240):
    run = subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(), capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert run.returncode >= 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A narrow random network, rendered words, a labelled LMDB whose per-image lexicons hold the truth."""
    from cnnctc.checkpoint import save_checkpoint
    from cnnctc.network import CNNCTC
    root = tmp_path_factory.mktemp("decoding_cli")
    save_checkpoint(CNNCTC(output_channel=32), root / "net.ckpt")
    write_word_images(root / "images", words=WORDS, seed=3)
    labels = (root / "images" / "labels.tsv").read_text().splitlines()
    # A third column: the per-image lexicon (here the truth alone, upper-cased as IIIT5K's are).
    with_lexicons = [f"{line}\t{line.split(chr(9))[1].upper()}" for line in labels]
    (root / "with_lexicons.tsv").write_text("\n".join(with_lexicons) + "\n")
    make_lmdb(root / "images", root / "with_lexicons.tsv", root / "data.lmdb")
    from cnnctc.export import export_model
    export_model(root / "net.onnx", format="onnx", checkpoint=root / "net.ckpt")
    return root


def test_predict_with_a_lexicon_prints_only_lexicon_words(setup):
    lexicon = setup / "lexicon.txt"
    lexicon.write_text("Cat\nriver\n\nstone\n", encoding="utf-8")
    run = cnnctc("predict", setup / "images", "--checkpoint", setup / "net.ckpt", "--lexicon", lexicon,
                 "--format", "json", "--top-k", "2", "-q")
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(records) == len(WORDS)
    for record in records:
        assert record["text"] in {"cat", "river", "stone"}  # folded: the alphabet is case-free
        assert [a["text"] for a in record["alternatives"]][0] in {"cat", "river", "stone"} - {record["text"]}
        assert "greedy" in record and 0 <= record["confidence"] <= 1


def test_beam_reports_runner_ups_best_first(setup):
    run = cnnctc("predict", setup / "images" / "00000.png", "--checkpoint", setup / "net.onnx", "--decoder", "beam",
                 "--top-k", "3", "--format", "json", "-q")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    probabilities = [record["confidence"]] + [a["confidence"] for a in record["alternatives"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)


def test_per_image_lexicons_are_read_from_the_lmdb(setup):
    greedy = cnnctc("eval", "--checkpoint", setup / "net.onnx", "--data", setup / "data.lmdb", "--json")
    lexicon = cnnctc("eval", "--checkpoint", setup / "net.onnx", "--data", setup / "data.lmdb", "--json",
                     "--per-image-lexicon")
    assert greedy.returncode == lexicon.returncode == 0, greedy.stderr + lexicon.stderr
    # Each sample's lexicon holds only its truth, so the lexicon protocol reads every word right,
    # whatever this untrained network's greedy reading is.
    assert json.loads(lexicon.stdout)["total"]["accuracy"] == 100.0
    assert json.loads(greedy.stdout)["total"]["accuracy"] < 100.0


@pytest.mark.parametrize("content, message", [
    (b"", "empty lexicon"),
    (b"\n  \n", "empty lexicon"),
    (b"caf\xe9\n", "UTF-8"),
    (b"h\xc3\xa9llo\n\xc3\xa9t\xc3\xa9\n", "can be written with the alphabet"),  # every word outside it
])
def test_bad_lexicon_files_are_one_line_and_change_nothing(setup, content, message):
    lexicon = setup / "bad.txt"
    lexicon.write_bytes(content)
    before = hashlib.sha256(lexicon.read_bytes()).hexdigest()
    run = cnnctc("predict", setup / "images", "--checkpoint", setup / "net.onnx", "--lexicon", lexicon, "-q")
    assert run.returncode == 1 and message in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and run.stdout == ""
    assert hashlib.sha256(lexicon.read_bytes()).hexdigest() == before


def test_unreadable_lexicons(setup):
    for path in (setup / "missing.txt", setup / "images"):
        run = cnnctc("predict", setup / "images", "--checkpoint", setup / "net.onnx", "--lexicon", path, "-q")
        assert run.returncode == 1 and str(path) in run.stderr and len(run.stderr.strip().splitlines()) == 1
    fifo = setup / "fifo.txt"
    os.mkfifo(fifo)
    run = cnnctc("eval", "--checkpoint", setup / "net.onnx", "--data", setup / "data.lmdb", "--lexicon", fifo,
                 timeout=60)
    assert run.returncode == 1 and "regular file" in run.stderr


def test_words_outside_the_alphabet_are_reported_and_skipped(setup):
    lexicon = setup / "mixed.txt"
    lexicon.write_text("cat\nnaïve\nrock-n-roll\n", encoding="utf-8")
    run = cnnctc("predict", setup / "images" / "00001.png", "--checkpoint", setup / "net.onnx", "--lexicon", lexicon,
                 "--format", "tsv")
    assert run.returncode == 0 and run.stdout.split("\t")[1] == "cat"
    assert "2" in run.stderr and "alphabet" in run.stderr  # one warning naming how many were skipped


@pytest.mark.parametrize("args", [["--decoder", "nope"], ["--top-k", "0"], ["--beam-width", "x"],
                                  ["--max-distance", "-1"]])
def test_bad_decoder_settings_are_usage_errors(setup, args):
    run = cnnctc("predict", setup / "images", "--checkpoint", setup / "net.onnx", *args)
    assert run.returncode == 2 and "usage:" in run.stderr


@pytest.mark.parametrize("args, message", [(["--top-k", "3"], "--top-k 3 needs --decoder beam or --lexicon"),
                                           (["--decoder", "beam", "--beam-width", "2", "--top-k", "3"],
                                            "--top-k 3 is more than --beam-width 2"),
                                           (["--max-distance", "1"], "lexicon")])
def test_impossible_combinations_are_usage_errors(setup, args, message):
    run = cnnctc("predict", setup / "images", "--checkpoint", setup / "net.onnx", *args)
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert run.returncode == 2 and run.stderr.startswith("usage:") and len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize("args, bound", [(["--beam-width", "1000000000"], "at most 4096"),
                                         (["--beam-width", "99999999999999999999"], "at most 4096"),
                                         (["--top-k", "5000"], "at most 4096"),
                                         (["--max-distance", "300"], "at most 256")])
def test_decoder_sizes_past_what_can_run_are_usage_errors_that_say_the_bound(tmp_path, args, bound):
    # Refused while parsing, before any model or image is opened.
    run = cnnctc("predict", tmp_path / "none.png", *args, timeout=60)
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert run.returncode == 2 and len(errors) == 1 and bound in errors[0] and args[0] in errors[0], run.stderr


def test_a_huge_lexicon_line_is_skipped_with_one_warning(setup):
    lexicon = setup / "huge-line.txt"
    with open(lexicon, "w", encoding="utf-8") as f:
        f.write("cat\n" + "x" * 20_000_000 + "\nriver\n")
    run = cnnctc("predict", setup / "images" / "00000.png", "--checkpoint", setup / "net.onnx", "--lexicon", lexicon,
                 "--format", "tsv")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\t")[1] in {"cat", "river"}
    warnings = [line for line in run.stderr.splitlines() if "longer than 256" in line]
    assert len(warnings) == 1 and "1 lexicon line" in warnings[0], run.stderr
