"""`cnnctc eval --protocol`: each protocol scores what its reference's own rule gives.

The bundled trained model (cnnctc/mini-synth), its head cut down to the digits, reads real LMDBs whose labels hold capitals,
punctuation, spaces, empty labels, 14-25 and over 25 symbols, and one image that does not
decode. For every protocol the test takes the model's readings from ``--predictions`` and
recomputes kept samples, accuracy and 1-N.E.D. with the few lines of the reference's rule, written
here independently of cnnctc (the zoo: mindspore-ai/models r1.3 official/cv/cnnctc; DTRB:
clovaai/deep-text-recognition-benchmark).
"""
import io
import json
import os
import re

import numpy as np
import pytest

from cnnctc.cli import main
from cnnctc.data import write_lmdb
from cnnctc.errors import CnnctcError
from cnnctc.evaluation import evaluate
from cnnctc.protocols import dtrb_similarity, get_protocol, icdar2019_similarity
from cnnctc.recognizer import Recognizer
from cnnctc.render import find_fonts, render_word

DIGITS = "0123456789"
BENCHMARK = "0123456789abcdefghijklmnopqrstuvwxyz"
# A model wider than the benchmark: the digits model with '1' read as 'A' and '0' as '-'.
WIDE = BENCHMARK + "A-"
ONE_FONT = (find_fonts() or [None])[:1]


# ---------------------------------------------------------------------------------------------
# The references' rules, written out here (not imported from cnnctc)

def levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        diagonal, row[0] = row[0], i
        for j in range(1, len(b) + 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1]))
    return row[-1]


def zoo_kept(labels, character):
    """zoo r1.3 src/dataset.py IIIT_Generator_batch lines 202-235; the truth: get_img_from_lmdb line 104."""
    max_len = int((26 + 1) // 2)
    kept = {}
    for index, label in labels.items():
        if len(label) > max_len:
            continue
        illegal_sample = False
        for char_item in label.lower():
            if char_item not in character:
                illegal_sample = True
                break
        if illegal_sample:
            continue
        kept[index] = label.lower()
    return kept


def dtrb_kept(labels, character, batch_max_length=25, data_filtering_off=False):
    """DTRB dataset.py LmdbDataset: the filter of lines 144-176 and the truth of lines 209-214."""
    kept = {}
    for index, label in labels.items():
        if not data_filtering_off:
            if len(label) > batch_max_length:
                continue
            if re.search(f"[^{character}]", label.lower()):
                continue
        kept[index] = re.sub(f"[^{character}]", "", label.lower())
    return kept


def zoo_score(truths, read):
    """eval.py lines 95-98 (pred == label); 1-N.E.D. in the ICDAR 2019 form (the zoo computes none)."""
    correct = ned = 0
    for index, gt in truths.items():
        pred = read[index]
        correct += pred == gt
        ned += 1 - levenshtein(pred, gt) / max(len(gt), len(pred)) if (gt or pred) else 1
    return correct, ned


def dtrb_score(truths, read, sensitive=False):
    """DTRB test.py lines 147-174."""
    n_correct = norm_ed = 0
    for index, gt in truths.items():
        pred = read[index]
        if sensitive:  # --sensitive --data_filtering_off
            pred = re.sub("[^0123456789abcdefghijklmnopqrstuvwxyz]", "", pred.lower())
            gt = re.sub("[^0123456789abcdefghijklmnopqrstuvwxyz]", "", gt.lower())
        if pred == gt:
            n_correct += 1
        if len(gt) == 0 or len(pred) == 0:
            norm_ed += 0
        elif len(gt) > len(pred):
            norm_ed += 1 - levenshtein(pred, gt) / len(gt)
        else:
            norm_ed += 1 - levenshtein(pred, gt) / len(pred)
    return n_correct, norm_ed


# ---------------------------------------------------------------------------------------------
# Models and datasets

def restricted(weights, alphabet, rows):
    """``weights`` (a model over BENCHMARK) behind a head over ``alphabet``: row k of the new head is
    the old head's row for the symbol ``rows`` gives (None: never read); the blank, last, stays."""
    head, bias = weights["Prediction.weight"], weights["Prediction.bias"]
    new_head = np.zeros((len(alphabet) + 1, head.shape[1]), head.dtype)
    new_bias = np.full(len(alphabet) + 1, -1000.0, bias.dtype)  # symbols the model never saw: never read
    for k, symbol in enumerate(alphabet):
        if rows.get(symbol) is not None:
            new_head[k], new_bias[k] = head[BENCHMARK.index(rows[symbol])], bias[BENCHMARK.index(rows[symbol])]
    new_head[-1], new_bias[-1] = head[-1], bias[-1]
    return {**weights, "Prediction.weight": new_head, "Prediction.bias": new_bias}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(digits.onnx, wide.onnx): the bundled trained model (cnnctc/mini-synth) behind a digits-only
    head, and the same weights behind a 38-symbol head that reads '1' as 'A' and '0' as '-'."""
    import mindspore as ms
    from cnnctc.checkpoint import read_checkpoint, save_checkpoint
    from cnnctc.export import export_model
    from cnnctc.registry import get_model
    root = tmp_path_factory.mktemp("eval_models")
    weights = {name: value.asnumpy() for name, value in
               read_checkpoint(get_model("cnnctc/mini-synth").bundled, weights_only=True).items()
               if not isinstance(value, str)}
    assert weights["Prediction.weight"].shape[0] == len(BENCHMARK) + 1
    built = []
    for name, alphabet, rows in (("digits", DIGITS, {d: d for d in DIGITS}),
                                 ("wide", WIDE, {**{d: d for d in DIGITS if d not in "10"}, "A": "1", "-": "0"})):
        entries = [{"name": n, "data": ms.Tensor(v)} for n, v in restricted(weights, alphabet, rows).items()]
        ckpt = save_checkpoint(entries, root / f"{name}.ckpt", metadata={"alphabet": alphabet})
        built.append(export_model(root / f"{name}.onnx", format="onnx", checkpoint=ckpt))
    return tuple(built)


def png(text):
    image = render_word(text, font=ONE_FONT[0]) if text else render_word(" ", font=ONE_FONT[0])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# (what the image shows, the label): every kind of label the protocols treat differently.
SAMPLES = [
    ("123", "123"), ("4567", "4567"), ("89", "89"), ("2580", "2580"), ("314", "314"),
    ("12", ""),                                   # an empty label, a word in the image
    ("", ""),                                     # an empty label, an empty image
    ("345", "3-45"), ("678", "6 78"), ("90", "A90"), ("77", "7.7"),  # punctuation, space, capital
    ("1234567890123", "1234567890123"),           # 13 symbols: the zoo's longest
    ("12345678901234", "12345678901234"),         # 14
    ("40", "40404040404040404040"),               # 20
    ("123", "1234567890123456789012345"),         # 25: DTRB's longest
    ("55", "55555555555555555555555555"),         # 26
    ("9", "9 9 9 9 9 9 9 9 9 9 9 9 9 9"),         # 27 raw symbols, 14 digits
    ("56", "5-6"),
    ("bad", "555"),                               # an image that does not decode
]
UNREADABLE_INDEX = 19


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """An LMDB with SAMPLES (1-based keys) and its labels."""
    root = tmp_path_factory.mktemp("eval_data")
    path = root / "field.lmdb"
    write_lmdb(path, [(b"\x89PNG not an image" if shown == "bad" else png(shown), label) for shown, label in SAMPLES])
    return path, {i: label for i, (_, label) in enumerate(SAMPLES, 1)}


def run_eval(capsys, *args):
    code = main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def evaluated(capsys, model, data, tmp_path, *options):
    """(JSON report, predictions by (dataset, index)) of one `cnnctc eval --json --predictions`."""
    predictions = tmp_path / f"predictions{len(list(tmp_path.iterdir()))}.jsonl"
    code, out, err = run_eval(capsys, "--checkpoint", model, "--data", *data, "--json", "--predictions",
                              predictions, *options)
    assert code == 0, err
    lines = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    return json.loads(out), {(line["dataset"], line["index"]): line for line in lines}


def check_against(report, lines, path, labels, truths, score):
    """The report and the predictions agree with a reference's kept truths and its score."""
    dataset = os.path.abspath(path)
    mine = {index: line for (name, index), line in lines.items() if name == dataset}
    assert sorted(mine) == sorted(labels)                        # one line per sample, kept or not
    assert all(mine[i]["label"] == labels[i] for i in labels)    # the raw label
    scored = {i: line["truth"] for i, line in mine.items() if line["skipped"] is None}
    assert scored == truths                                      # what is kept, and the truth compared
    assert all(line["skipped"] and line["prediction"] is None for i, line in mine.items() if i not in truths)
    read = {i: mine[i]["decoded"] for i in truths}
    correct, ned = score(truths, read)
    result = next(r for r in report["datasets"] if r["path"] == dataset)
    assert (result["kept"], result["skipped"], result["correct"]) == (len(truths), len(labels) - len(truths), correct)
    assert result["accuracy"] == pytest.approx(100 * correct / len(truths), abs=1e-4)
    assert result["norm_ed"] == pytest.approx(ned / len(truths), abs=1e-6)
    for i in truths:
        assert mine[i]["correct"] == (mine[i]["prediction"] == truths[i])
        assert mine[i]["edit_distance"] == levenshtein(mine[i]["prediction"], truths[i])
    return correct


def test_zoo_is_the_default_and_follows_the_zoo_rule(capsys, models, field, tmp_path):
    path, labels = field
    report, lines = evaluated(capsys, models[0], [path], tmp_path)
    assert report["protocol"] == "zoo" and report["max_length"] == 13
    truths = zoo_kept(labels, DIGITS)
    truths[UNREADABLE_INDEX] = "[dummy_label]"  # src/dataset.py line 102, as the Ascend-310 path scores it
    correct = check_against(report, lines, path, labels, truths, zoo_score)
    assert 0 < correct < len(truths)
    assert "" in truths.values() and 13 in map(len, truths.values())  # empty labels kept, 13 symbols kept
    unreadable = lines[(os.path.abspath(path), UNREADABLE_INDEX)]
    assert unreadable["image"].startswith("unreadable") and unreadable["correct"] is False
    assert report["total"]["unreadable"] == 1
    skipped = report["datasets"][0]["skipped_by"]
    assert skipped == {"a symbol outside the alphabet": 5, "longer than 13 symbols": 5}


def test_dtrb_follows_dtrbs_rule(capsys, models, field, tmp_path):
    path, labels = field
    report, lines = evaluated(capsys, models[0], [path], tmp_path, "--protocol", "dtrb")
    truths = dtrb_kept(labels, DIGITS)
    truths[UNREADABLE_INDEX] = "dummylabel"  # dataset.py line 207, then lines 209-214
    check_against(report, lines, path, labels, truths, dtrb_score)
    assert {14, 20, 25} <= set(map(len, truths.values())) and max(map(len, truths.values())) == 25
    assert "" in truths.values()


def test_dtrb_unfiltered_keeps_every_label_and_strips_the_truth(capsys, models, field, tmp_path):
    path, labels = field
    report, lines = evaluated(capsys, models[0], [path], tmp_path, "--protocol", "dtrb-unfiltered")
    truths = dtrb_kept(labels, DIGITS, data_filtering_off=True)
    truths[UNREADABLE_INDEX] = "dummylabel"
    correct = check_against(report, lines, path, labels, truths, dtrb_score)
    assert len(truths) == len(labels) and report["max_length"] is None
    assert truths[10] == "90" and truths[8] == "345" and truths[16] == "5" * 26
    assert 0 < correct < len(truths)


def test_max_length_overrides_every_protocol(capsys, models, field, tmp_path):
    path, labels = field
    report, lines = evaluated(capsys, models[0], [path], tmp_path, "--protocol", "dtrb", "--max-length", "14")
    truths = dtrb_kept(labels, DIGITS, batch_max_length=14)
    truths[UNREADABLE_INDEX] = "dummylabel"
    check_against(report, lines, path, labels, truths, dtrb_score)
    report, lines = evaluated(capsys, models[0], [path], tmp_path, "--protocol", "dtrb-unfiltered", "--max-length", "4")
    truths = {i: t for i, t in dtrb_kept(labels, DIGITS, data_filtering_off=True).items() if len(labels[i]) <= 4}
    truths[UNREADABLE_INDEX] = "dummylabel"
    check_against(report, lines, path, labels, truths, dtrb_score)
    report, lines = evaluated(capsys, models[0], [path], tmp_path, "--max-length", "3")
    assert report["max_length"] == 3 and report["datasets"][0]["kept"] == len(
        [i for i in zoo_kept(labels, DIGITS) if len(labels[i]) <= 3])


def test_drop_last_scores_only_full_batches_like_eval_py(capsys, models, field, tmp_path):
    path, labels = field
    report, lines = evaluated(capsys, models[0], [path], tmp_path, "--drop-last", "4")
    kept = zoo_kept(labels, DIGITS)
    kept[UNREADABLE_INDEX] = "[dummy_label]"
    # src/dataset.py lines 242-264: a batch is yielded only when it holds TEST_BATCH_SIZE samples.
    order = sorted(kept)
    full = order[:len(order) // 4 * 4]
    assert len(order) % 4 and len(full) < len(order)
    truths = {i: kept[i] for i in full}
    check_against(report, lines, path, labels, truths, zoo_score)
    assert report["drop_last"] == 4
    for i in order[len(full):]:
        assert "full batch of 4" in lines[(os.path.abspath(path), i)]["skipped"]


def test_a_wide_alphabet_is_scored_lower_cased_and_reduced_to_0_9a_z(capsys, models, field, tmp_path):
    path, labels = field
    wide_labels = {1: "A23", 2: "4567", 3: "2-3", 4: "", 5: "a-b"}
    shown = {1: "123", 2: "4567", 3: "203", 4: "", 5: "10"}
    wide_path = tmp_path / "wide.lmdb"
    write_lmdb(wide_path, [(png(shown[i]), wide_labels[i]) for i in sorted(wide_labels)])
    # DTRB's --sensitive --data_filtering_off: both sides lower-cased and reduced (test.py lines 147-154).
    report, lines = evaluated(capsys, models[1], [wide_path], tmp_path, "--protocol", "dtrb-unfiltered")
    truths = dtrb_kept(wide_labels, BENCHMARK, data_filtering_off=True)
    correct = check_against(report, lines, wide_path, wide_labels, truths,
                            lambda t, r: dtrb_score(t, r, sensitive=True))
    mine = {i: lines[(os.path.abspath(wide_path), i)] for i in wide_labels}
    # The wide model did read symbols outside 0-9a-z, so comparing without the reduction would differ.
    assert any(set(line["decoded"]) & set("A-") for line in mine.values())
    assert all(line["prediction"] == re.sub("[^0-9a-z]", "", line["decoded"].lower()) for line in mine.values())
    assert correct >= 1
    # zoo: the benchmark's 36 symbols decide what is kept, then the same reduction.
    report, lines = evaluated(capsys, models[1], [wide_path], tmp_path)
    truths = zoo_kept(wide_labels, BENCHMARK)
    assert sorted(truths) == [1, 2, 4]
    check_against(report, lines, wide_path, wide_labels, truths,
                  lambda t, r: zoo_score(t, {i: re.sub("[^0-9a-z]", "", r[i].lower()) for i in r}))


def test_text_table_names_the_protocol_and_tells_same_named_datasets_apart(capsys, models, field, tmp_path):
    path, _ = field
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_lmdb(tmp_path / name / "test.lmdb", [(png("12"), "12"), (png("345"), "345")])
    code, out, err = run_eval(capsys, "--checkpoint", models[0], "--data", tmp_path / "a" / "test.lmdb",
                              tmp_path / "b" / "test.lmdb", "--protocol", "dtrb")
    assert code == 0, err
    assert out.splitlines()[0].startswith("protocol: dtrb (DTRB's test.py")
    rows = [line.split()[0] for line in out.splitlines()[2:] if not line.startswith("-")]
    assert rows == [os.path.join("a", "test.lmdb"), os.path.join("b", "test.lmdb"), "total"]
    code, out, err = run_eval(capsys, "--checkpoint", models[0], "--data", tmp_path / "a" / "test.lmdb",
                              tmp_path / "b" / "test.lmdb", "--json")
    report = json.loads(out)
    assert [d["path"] for d in report["datasets"]] == [str(tmp_path / n / "test.lmdb") for n in "ab"]
    assert {"dataset", "kept", "skipped", "correct", "accuracy", "norm_ed"} <= set(report["total"])


def test_the_ned_forms():
    assert icdar2019_similarity("", "") == 1.0 and dtrb_similarity("", "") == 0.0
    assert icdar2019_similarity("abc", "") == 0.0 == dtrb_similarity("", "abc")
    assert icdar2019_similarity("abcd", "abd") == dtrb_similarity("abcd", "abd") == 0.75
    with pytest.raises(CnnctcError, match="unknown evaluation protocol"):
        get_protocol("icdar")


# ---------------------------------------------------------------------------------------------
# The predictions file holds the error contract

def test_predictions_never_replace_a_file_unasked(capsys, models, field, tmp_path):
    path, labels = field
    target = tmp_path / "mine.jsonl"
    target.write_text("my notes\n")
    code, out, err = run_eval(capsys, "--checkpoint", models[0], "--data", path, "--predictions", target)
    assert code == 1 and err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert target.read_text() == "my notes\n"
    # --overwrite replaces only a predictions file eval wrote, never the user's own notes.
    code, out, err = run_eval(capsys, "--checkpoint", models[0], "--data", path, "--predictions", target,
                              "--overwrite")
    assert code == 1 and err.count("\n") == 1 and "not a predictions file" in err
    assert target.read_text() == "my notes\n"
    target.unlink()
    for _ in range(2):  # written, then replaced
        code, out, err = run_eval(capsys, "--checkpoint", models[0], "--data", path, "--predictions", target,
                                  "--overwrite")
        assert code == 0, err
        assert len(target.read_text().splitlines()) == len(labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.jsonl"]  # no temporary file left


@pytest.mark.parametrize("where", ["model", "lmdb folder", "hard link to the model"])
def test_predictions_are_never_written_over_an_input(capsys, models, field, tmp_path, where):
    path, _ = field
    model = tmp_path / "model.onnx"
    model.write_bytes(models[0].read_bytes())
    data = tmp_path / "data.lmdb"
    write_lmdb(data, [(png("12"), "12")])
    target = {"model": model, "lmdb folder": data / "data.mdb", "hard link to the model": tmp_path / "link"}[where]
    if where.startswith("hard link"):
        os.link(model, target)
    before = {p: p.read_bytes() for p in [model, *data.iterdir()]}
    code, out, err = run_eval(capsys, "--checkpoint", model, "--data", data, "--predictions", target, "--overwrite")
    assert code == 1 and err.count("\n") == 1 and "the input" in err
    assert {p: p.read_bytes() for p in [model, *data.iterdir()]} == before


def test_a_failed_eval_leaves_no_predictions_and_a_dead_runs_temporary_is_removed(capsys, models, field, tmp_path):
    path, _ = field
    target = tmp_path / "p.jsonl"
    dead = tmp_path / ".p.jsonl.999999999.0badc0de.tmp"  # what a run killed with -9 leaves (no such pid)
    dead.write_text("partial")
    code, out, err = run_eval(capsys, "--checkpoint", models[0], "--data", path, tmp_path / "missing.lmdb",
                              "--predictions", target)
    assert code == 1 and "missing.lmdb" in err
    assert not target.exists()
    code, out, err = run_eval(capsys, "--checkpoint", models[0], "--data", path, "--predictions", target)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_predictions_refuses_a_file_that_appears_meanwhile(models, field, tmp_path):
    path, _ = field
    target = tmp_path / "p.jsonl"
    reader = Recognizer(models[0])

    def another_writer(n):  # runs during the evaluation, after the start-up checks
        if not target.exists():
            target.write_text("the other run's\n")

    with pytest.raises(CnnctcError, match="appeared while evaluating; not replaced"):
        evaluate(reader, [path], predictions=target, progress=another_writer)
    assert target.read_text() == "the other run's\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


# ---------------------------------------------------------------------------------------------
# Per-image lexicons with --max-distance (issue 14)

def test_per_image_lexicon_with_max_distance(capsys, models, tmp_path):
    words = ["123", "4567", "89", "2580", "314", "66"]
    lexicon = {w: [w, w[::-1] + "1", "7" + w] for w in words}
    data = tmp_path / "lex.lmdb"
    write_lmdb(data, [(png(w), w, lexicon[w]) for w in words])
    _, greedy = evaluated(capsys, models[0], [data], tmp_path)
    _, near = evaluated(capsys, models[0], [data], tmp_path, "--per-image-lexicon", "--max-distance", "0")
    _, far = evaluated(capsys, models[0], [data], tmp_path, "--per-image-lexicon", "--max-distance", "25")
    for key, line in greedy.items():
        words_here = lexicon[line["label"]]
        # Within 0 edits only the greedy reading itself competes: it, if it is a lexicon word, else nothing.
        assert near[key]["decoded"] == (line["decoded"] if line["decoded"] in words_here else "")
        assert far[key]["decoded"] in words_here
    with pytest.raises(SystemExit) as stopped:  # a usage error: exit 2, with the usage
        run_eval(capsys, "--checkpoint", models[0], "--data", data, "--max-distance", "1")
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "usage:" in err
    assert "--max-distance limits the words of a lexicon; add --lexicon FILE or --per-image-lexicon" in err
    with pytest.raises(ValueError, match="max_distance applies to per_image_lexicon"):
        evaluate(Recognizer(models[0]), [data], max_distance=1)
