"""The error contract, round three: answers that were wrong, or lines that were not one, by class.

1. Images of 32-bit integers or floats (Pillow modes I and F) read by the range their values use,
   not as black: predict, make-lmdb + eval, and cnnctc.preprocess read them as their 8-bit twins;
   one whose values hold NaN is refused, naming the reason, and the batch goes on.
2. A dataset of which eval kept nothing has no accuracy: "-" in the table, null in JSON, None in Python.
3. Every decoding function refuses an alphabet that fails the one alphabet check (a repeat, a tab).
4. A per-image lexicon with no usable word: that sample is read without it, counted, and named once.
5. Options that mean nothing without another are usage errors (exit 2, the usage, one error line).
6. A user's long value (a 5000-symbol alphabet, a long word, many paths) is shortened in the line.

Real processes of the CLI, real images and LMDBs; the network is the bundled cnnctc/mini-synth,
exported once to ONNX so that the commands run on onnxruntime.
"""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import isolate, subprocess_env
from cnnctc.data import write_lmdb
from cnnctc.errors import CnnctcError
from cnnctc.render import render_word

WORDS = ["4567", "2580", "314"]
LONG_ALPHABET = "".join(chr(0x4E00 + i) for i in range(5000))   # 5000 distinct printable symbols


def cli(*args, timeout=240):
    """``cnnctc ARGS`` as a user runs it: never a traceback, never death by a signal."""
    run = subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(), capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert run.returncode >= 0, f"killed by signal {-run.returncode}: {run.stderr[-2000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    return run


def error_lines(run):
    return [line for line in run.stderr.splitlines() if "error:" in line]


def grey(word):
    """A rendered word as 8-bit grey values (uint8, H x W)."""
    return np.asarray(render_word(word).convert("L"))


def png(values):
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The bundled cnnctc/mini-synth exported once to ONNX (the commands read it without MindSpore)."""
    from cnnctc.export import export_model
    folder = tmp_path_factory.mktemp("round3_model")
    with pytest.MonkeyPatch.context() as patch:
        isolate(patch, folder / "cache")
        patch.setenv("CNNCTC_OFFLINE", "1")
        return export_model(folder / "mini.onnx", model="cnnctc/mini-synth", device_target="CPU")


# 1. Integer and float images -----------------------------------------------------------------------

def wide_images(folder, word, number):
    """The word as an 8-bit PNG and as its wider twins; {file name: how it stores the values}."""
    values = grey(word).astype(np.int64)
    made = {
        f"w{number}.png": values.astype(np.uint8),                         # the reference: mode L
        f"w{number}-int32.tif": values.astype(np.int32),                   # mode I, values 0..255
        f"w{number}-float.tif": (values / 255.0).astype(np.float32),       # mode F, values 0..1
        f"w{number}-uint16.png": (values * 257).astype(np.uint16),         # mode I;16, values 0..65535
        f"w{number}-wide.tif": (values * 1000 - 70000).astype(np.int32),   # mode I, an arbitrary range
    }
    for name, array in made.items():
        Image.fromarray(array).save(folder / name)
    return list(made)


def test_integer_and_float_images_read_by_their_range_everywhere(tmp_path, model):
    from cnnctc import preprocess
    from cnnctc.transforms import load_image
    images = tmp_path / "images"
    images.mkdir()
    names = {word: wide_images(images, word, number) for number, word in enumerate(WORDS)}
    assert [Image.open(images / n).mode for n in names[WORDS[0]]] == ["L", "I", "F", "I;16", "I"]
    # The Python API: each twin is the same picture as the 8-bit one (exact but for the stretched range).
    for word, files in names.items():
        reference = np.asarray(load_image(images / files[0]))
        for name in files[1:4]:
            np.testing.assert_array_equal(np.asarray(load_image(images / name)), reference, err_msg=name)
        stretched = np.asarray(load_image(images / files[4])).astype(float)    # from its minimum to its maximum
        low, high = reference.min(), reference.max()
        assert np.abs(stretched - np.rint((reference - low) * 255.0 / (high - low))).max() <= 1
        np.testing.assert_array_equal(preprocess(images / files[1]), preprocess(images / files[0]))
    # A float image holding NaN has no picture: refused with the reason, the others still read.
    broken = (grey("77") / 255.0).astype(np.float32)
    broken[3, 3] = np.nan
    Image.fromarray(broken).save(images / "nan.tif")

    # predict: every twin reads as its word, the NaN image is one line naming it.
    run = cli("predict", images, "--checkpoint", model, "--format", "tsv", "-q")
    assert run.returncode == 1
    read = {line.split("\t")[0].rsplit("/", 1)[1]: line.split("\t")[1] for line in run.stdout.splitlines()}
    assert read == {name: word for word, files in names.items() for name in files}, run.stdout
    assert error_lines(run) == [line for line in run.stderr.splitlines() if line.startswith("cnnctc: error:")]
    assert len(error_lines(run)) == 1 and "nan.tif" in error_lines(run)[0] and "NaN" in error_lines(run)[0]

    # make-lmdb keeps the wide images (they are readable), and eval reads them as their words.
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{name}\t{word}\n" for word, files in names.items() for name in files[1:]))
    made = cli("make-lmdb", images, labels, tmp_path / "wide.lmdb", "-q", timeout=120)
    assert made.returncode == 0 and not error_lines(made), made.stderr
    run = cli("eval", "--checkpoint", model, "--data", tmp_path / "wide.lmdb", "--json", "-q")
    assert run.returncode == 0, run.stderr
    total = json.loads(run.stdout)["total"]
    assert (total["kept"], total["correct"], total["unreadable"]) == (12, 12, 0)


# 2. Nothing kept, no accuracy ---------------------------------------------------------------------

def test_a_dataset_of_which_nothing_was_kept_has_no_accuracy(tmp_path, model):
    from cnnctc.evaluation import evaluate
    from cnnctc.recognizer import Recognizer
    write_lmdb(tmp_path / "read.lmdb", [(png(grey(w)), w) for w in WORDS])
    write_lmdb(tmp_path / "filtered.lmdb", [(png(grey("12")), "a!b"), (png(grey("34")), "$?")])  # none kept
    write_lmdb(tmp_path / "short.lmdb", [(png(grey("12")), "12"), (png(grey("34")), "34")])
    data = ["--data", tmp_path / "read.lmdb", tmp_path / "filtered.lmdb", tmp_path / "short.lmdb"]

    table = cli("eval", "--checkpoint", model, *data, "--drop-last", "3", "-q")
    assert table.returncode == 0 and table.stderr == "", table.stderr
    rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[1:] if line[:1].isalpha()}
    assert rows["read.lmdb"] == ["3", "0", "100.00", "1.0000"]
    assert rows["filtered.lmdb"] == ["0", "2", "-", "-"]          # every label filtered
    assert rows["short.lmdb"] == ["0", "2", "-", "-"]             # both after the last full batch of 3
    assert rows["total"] == ["3", "4", "100.00", "1.0000"]

    run = cli("eval", "--checkpoint", model, *data, "--drop-last", "3", "--json", "-q")
    report = json.loads(run.stdout)
    scores = {d["dataset"]: (d["accuracy"], d["norm_ed"]) for d in report["datasets"]}
    assert scores == {"read.lmdb": (100.0, 1.0), "filtered.lmdb": (None, None), "short.lmdb": (None, None)}
    assert '"accuracy": null' in run.stdout

    results, total = evaluate(Recognizer(model), [tmp_path / "filtered.lmdb"])
    assert (results[0].accuracy, results[0].norm_ed, total.accuracy, total.norm_ed) == (None,) * 4
    assert total.as_dict()["accuracy"] is None and total.kept == 0 and total.skipped == 2


# 3. Every decoder runs the one alphabet check ------------------------------------------------------

@pytest.mark.parametrize("alphabet, problem", [("abcxyy", "repeats 'y'"), ("abc\tyz", "'\\t'"), ("", "is empty")])
def test_every_decoding_function_refuses_a_bad_alphabet(alphabet, problem):
    from cnnctc import (Lexicon, ctc_beam_decode, ctc_greedy_decode, ctc_lexicon_decode, ctc_log_probability,
                        make_decoder)
    from cnnctc.decoding import DecoderError
    logits = np.zeros((1, 8, len(alphabet) + 1))
    logits[0, :, len(alphabet) - 1 if alphabet else 0] = 5.0      # every column: the last symbol, 'y' or 'z'
    calls = {"ctc_greedy_decode": lambda: ctc_greedy_decode(logits, alphabet),
             "ctc_beam_decode": lambda: ctc_beam_decode(logits, alphabet),
             "ctc_lexicon_decode": lambda: ctc_lexicon_decode(logits, alphabet, ["y", "ab"]),
             "ctc_log_probability": lambda: ctc_log_probability(logits, alphabet, ["y"]),
             "Lexicon": lambda: Lexicon(["y", "ab"], alphabet),
             "make_decoder('beam')": lambda: make_decoder("beam")(logits, alphabet)}
    for name, call in calls.items():
        with pytest.raises(DecoderError) as refused:
            call()
        message = str(refused.value)
        assert isinstance(refused.value, ValueError) and isinstance(refused.value, CnnctcError), name
        assert message.startswith("alphabet ") and problem in message and "\n" not in message, (name, message)


# 4. A per-image lexicon with no usable word --------------------------------------------------------

def test_a_per_image_lexicon_with_no_usable_word_reads_that_sample_without_it(tmp_path, model):
    samples = [(png(grey("4567")), "4567", ["4567", "7654"]),
               (png(grey("2580")), "2580", ["9" * 300, "x" * 30]),     # longer than the network can read
               (png(grey("314")), "314", ["314", "413"]),
               (png(grey("89")), "89", ["héé", "ab-cd"])]             # symbols outside the alphabet
    write_lmdb(tmp_path / "lex.lmdb", samples)
    greedy = cli("eval", "--checkpoint", model, "--data", tmp_path / "lex.lmdb", "--predictions",
                 tmp_path / "greedy.jsonl")
    run = cli("eval", "--checkpoint", model, "--data", tmp_path / "lex.lmdb", "--per-image-lexicon", "--json",
              "--predictions", tmp_path / "lexicon.jsonl")
    assert greedy.returncode == 0 and run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["total"]["kept"] == 4 and report["total"]["lexicon_fallbacks"] == 2
    assert report["datasets"][0]["lexicon_fallbacks"] == 2
    said = [line for line in run.stderr.splitlines() if "per-image lexicon" in line and "no word" in line]
    assert len(said) == 1 and "2 samples'" in said[0] and "lexicon-000000002 of lex.lmdb" in said[0], run.stderr
    assert not error_lines(run)
    # The two samples read without their lexicon read as greedy decoding does; the others from theirs.
    read = {}
    for name in ("greedy", "lexicon"):
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        read[name] = {row["index"]: row["decoded"] for row in map(json.loads, lines)}
    assert read["lexicon"][2] == read["greedy"][2] and read["lexicon"][4] == read["greedy"][4]
    assert (read["lexicon"][1], read["lexicon"][3]) == ("4567", "314")
    # The table run says the same once, and prints its table.
    table = cli("eval", "--checkpoint", model, "--data", tmp_path / "lex.lmdb", "--per-image-lexicon")
    assert table.returncode == 0 and "total" in table.stdout
    assert sum("no word the network can read" in line for line in table.stderr.splitlines()) == 1


# 5. Options that mean nothing alone are usage errors -----------------------------------------------

@pytest.mark.parametrize("args, message", [
    ("eval --data D.lmdb --max-distance 2", "--max-distance limits the words of a lexicon"),
    ("eval --data D.lmdb --lexicon W.txt --per-image-lexicon", "give one of them"),
    ("eval --data D.lmdb --overwrite", "--overwrite replaces the --predictions or --output FILE"),
    ("eval --data D.lmdb --beam-width 5", "--beam-width sets the beam of --decoder beam"),
    ("predict I.png --beam-width 5", "--beam-width sets the beam of --decoder beam"),
    ("predict I.png --max-distance 1", "--max-distance limits the words of a lexicon"),
    ("predict I.png --top-k 3", "--top-k 3 needs --decoder beam or --lexicon FILE"),
    ("predict I.png --decoder beam --top-k 12", "--top-k 12 is more than --beam-width 10"),
    ("predict I.png --decoder beam --lexicon W.txt", "the beam would never run"),
    ("download --sha256 " + "a" * 64, "--sha256 names another file and needs --url URL"),
])
def test_options_that_mean_nothing_alone_are_usage_errors(tmp_path, args, message):
    # The names need not exist: the command line is refused before anything is opened.
    run = cli(*[str(tmp_path / a) if a[:1].isupper() else a for a in args.split()], timeout=60)
    errors = error_lines(run)
    assert run.returncode == 2 and run.stderr.startswith("usage: cnnctc "), run.stderr
    assert len(errors) == 1 and message in errors[0], run.stderr


# 6. Long values are shortened in the line -----------------------------------------------------------

def test_long_values_are_shortened_in_error_lines(tmp_path, model):
    from cnnctc import Lexicon, ctc_log_probability
    from cnnctc.decoding import DecoderError, LexiconError
    # finetune: an alphabet of 5000 symbols that none of the labels fits.
    write_lmdb(tmp_path / "train.lmdb", [(png(grey(w)), w) for w in WORDS])
    run = cli("finetune", "--train", tmp_path / "train.lmdb", "--out", tmp_path / "run", "--alphabet", LONG_ALPHABET,
              "--pretrained", "none", "--steps", "1", "--batch-size", "1", "-q")
    errors = error_lines(run)
    assert run.returncode == 1 and len(errors) == 1, run.stderr
    assert "none of its samples fits the alphabet" in errors[0] and "... (5,000 symbols)" in errors[0]
    assert LONG_ALPHABET[:40] in errors[0] and LONG_ALPHABET[40:80] not in errors[0] and len(errors[0]) < 300
    # A usage error quoting the value (argparse's invalid choice, a number that is not one).
    for option in ("--format", "--batch-size"):
        run = cli("predict", tmp_path / "none.png", option, LONG_ALPHABET, timeout=60)
        errors = error_lines(run)
        assert run.returncode == 2 and len(errors) == 1 and "(5,000 symbols)" in errors[0], run.stderr
        assert len(errors[0]) < 300
    # predict over many folders that hold no image: the line names a few and counts the rest.
    empty = []
    for number in range(400):
        (tmp_path / "empty" / f"folder-{number:03d}").mkdir(parents=True)
        empty.append(tmp_path / "empty" / f"folder-{number:03d}")
    run = cli("predict", *empty, "--checkpoint", model, timeout=60)
    errors = error_lines(run)
    assert run.returncode == 1 and len(errors) == 1 and "and 397 more" in errors[0] and len(errors[0]) < 1000
    # The Python API: a word and an alphabet of any length cost one short line.
    logits = np.zeros((1, 26, len(LONG_ALPHABET) + 1), np.float32)
    with pytest.raises(DecoderError) as refused:
        ctc_log_probability(logits, LONG_ALPHABET, ["a" * 3000])
    assert "(3,000 symbols) has symbols outside the alphabet" in str(refused.value)
    assert "(5,000 symbols)" in str(refused.value) and len(str(refused.value)) < 300
    with pytest.raises(LexiconError) as refused:
        Lexicon(["abc"], LONG_ALPHABET)
    assert "(5,000 symbols)" in str(refused.value) and len(str(refused.value)) < 300
