"""The contract, round three: what a hostile user's sweep found, each on real files and processes.

- ``info --checkpoint`` shows a lineage as data: a file's control characters never reach the
  terminal, its strings are cut short, a count that is no count (401 digits, negative, NaN) reads
  as damaged, and ``--json`` is valid JSON that still holds the data;
- a lineage that contradicts the file it is in (the alphabet the file holds, its network's width)
  is shown as ``contradicted``, its claims never as true, also in an export of that file;
- ``eval`` says in one warning line per dataset that images could not be read, and how they were
  scored, instead of printing an accuracy that silently counts them as misreadings;
- a MindSpore ``Recognizer`` leaves the caller's PYNATIVE_MODE alone (it compiles its network with
  ``mindspore.jit``), and a script that exits with one alive exits quietly (no ``Cell.__del__``
  tracebacks, even after ``import multiprocessing``).
"""
import io
import json
import subprocess
import sys
import textwrap

import lmdb
import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import subprocess_env
from cnnctc.registry import BUNDLED_MODEL, get_model

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
WIDTH = 64   # cnnctc/mini-synth's Prediction.weight is (37, 64)


def cnnctc(*args, timeout=600):
    run = subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in run.stderr, run.stderr
    return run


def info(path, *args):
    run = cnnctc("-q", "info", "--checkpoint", path, *args)
    assert run.returncode == 0 and run.stderr == "", (run.returncode, run.stderr)
    return run.stdout


def strict_json(text):
    """JSON as the standard has it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def honest_lineage():
    """A fine-tune's lineage that agrees with the bundled model's weights."""
    return {"origin": "finetune", "written_by": "cnnctc 0.1.0", "started_from": {"kind": "none"},
            "trained_on": {"datasets": [{"path": "flip.lmdb", "num_samples": 20, "kept": 20}], "skipped": {},
                           "alphabet": ALPHABET, "planned_steps": 5, "batch_size": 8, "workers": 1,
                           "recipe": {"lr": 0.0005, "output_channel": WIDTH}, "seed": 1, "steps": 5},
            "measured": None}


@pytest.fixture(scope="module")
def lineages(tmp_path_factory):
    """The bundled model's weights saved again, each with another lineage entry: {name: path}."""
    import mindspore as ms
    folder = tmp_path_factory.mktemp("sweep_lineages")
    state = ms.load_checkpoint(str(get_model(BUNDLED_MODEL).bundled))
    weights = [{"name": k, "data": v} for k, v in state.items() if not isinstance(v, str)]
    meta = {k: v for k, v in state.items() if isinstance(v, str) and k != "cnnctc_lineage"}
    assert meta["alphabet"] == ALPHABET and state["Prediction.weight"].shape == (37, WIDTH)

    hostile = honest_lineage()
    hostile["written_by"] = "cnnctc 0.1.0\x1b[2J\x1b[31mPWNED\nmeasured:     99.99% accuracy on IIIT5K" + "X" * 3000
    hostile["trained_on"]["datasets"] = [{"path": "\x1b]0;evil title\x07clean.lmdb", "num_samples": 10 ** 400,
                                          "kept": -3}]
    hostile["trained_on"]["recipe"]["lr"] = float("inf")
    hostile["measured"] = {"protocol": "zoo\u202e", "accuracy": float("nan"), "best_accuracy": 250.0,
                           "best_step": 10 ** 30, "datasets": [{"path": "valid\x9b2J.lmdb", "kept": 3}]}
    wrong_alphabet = honest_lineage()
    wrong_alphabet["trained_on"]["alphabet"] = "abc"
    wrong_alphabet["trained_on"]["recipe"]["output_channel"] = 512
    wrong_width = honest_lineage()
    wrong_width["trained_on"]["recipe"]["output_channel"] = 512
    paths = {}
    for name, lineage in (("hostile", hostile), ("alphabet", wrong_alphabet), ("width", wrong_width),
                          ("honest", honest_lineage())):
        paths[name] = folder / f"{name}.ckpt"
        text = json.dumps(lineage)   # NaN and infinity as Python writes them: what a file may hold
        ms.save_checkpoint(weights, str(paths[name]), append_dict={**meta, "cnnctc_lineage": text})
    return paths


# --- 1. A lineage is shown as data, never as the terminal's commands ----------------------------

def test_info_shows_a_lineage_as_data_never_as_the_terminals_commands(lineages):
    text = info(lineages["hostile"])
    lines = text.splitlines()
    assert all(line.isprintable() for line in lines), [line for line in lines if not line.isprintable()]
    assert all(len(line) <= 400 for line in lines), max(map(len, lines))
    # The forged line is part of the written_by value, escaped on its line; no second "measured:".
    written = next(line for line in lines if line.startswith("written by:"))
    assert "\\x1b[2J\\x1b[31mPWNED\\nmeasured:" in written and "(3,066 symbols)" in written, written
    measured = [line for line in lines if line.strip().startswith("measured:")]
    assert len(measured) == 1 and "99.99%" not in measured[0], measured
    assert "? (damaged: NaN, not a percentage)" in measured[0] and "250.0" in measured[0], measured[0]
    assert "zoo\\u202e protocol" in measured[0] and "valid\\x9b2J.lmdb" in measured[0], measured[0]
    trained = next(line for line in lines if line.strip().startswith("trained on:"))
    assert "\\x1b]0;evil title\\x07clean.lmdb" in trained, trained
    assert "damaged: a number of more than 15 digits" in trained and "damaged: -3" in trained, trained
    assert "1" + "0" * 20 not in text   # 10**400 is never printed as a count
    assert "lr ? (damaged: infinity" in text

    # --json keeps the data, as valid JSON with no control character left unescaped.
    out = info(lineages["hostile"], "--json")
    assert all(line.isprintable() for line in out.splitlines())
    report = strict_json(out)
    lineage = report["lineage"]
    assert lineage["written_by"].startswith("cnnctc 0.1.0\x1b[2J") and len(lineage["written_by"]) == 3066
    assert lineage["trained_on"]["datasets"][0] == {"path": "\x1b]0;evil title\x07clean.lmdb",
                                                    "num_samples": 10 ** 400, "kept": -3}
    assert lineage["measured"]["accuracy"] == "NaN" and lineage["trained_on"]["recipe"]["lr"] == "Infinity"
    assert lineage["measured"]["protocol"] == "zoo\u202e"


# --- 2. A lineage that contradicts its own file ---------------------------------------------------

def test_a_lineage_contradicting_the_files_alphabet_or_width_is_never_shown_as_true(lineages, tmp_path):
    text = info(lineages["alphabet"])
    assert "contradicted: it says it was trained with the alphabet 'abc'" in text, text
    assert f"the file's alphabet is '{ALPHABET}'" in text, text
    assert "training:" not in text and "width 512" not in text and "written by:" not in text, text
    lineage = strict_json(info(lineages["alphabet"], "--json"))["lineage"]
    assert lineage["origin"] == "unknown" and "'abc'" in lineage["contradiction"] and "trained_on" not in lineage

    text = info(lineages["width"])
    assert "contradicted: it says the network is 512 wide" in text and f"are {WIDTH} wide" in text, text
    assert "training:" not in text, text

    # The same weights with a lineage that agrees: shown, with its width and alphabet.
    text = info(lineages["honest"])
    assert "contradicted" not in text and f"width {WIDTH}" in text and f"alphabet '{ALPHABET}'" in text, text

    # An export copies the verdict, not the claims.
    onnx = tmp_path / "alphabet.onnx"
    run = cnnctc("-q", "export", "--checkpoint", lineages["alphabet"], "--format", "onnx", "--out", onnx)
    assert run.returncode == 0, run.stderr
    text = info(onnx)
    assert "contradicted: it says it was trained with the alphabet 'abc'" in text and "width 512" not in text, text


# --- 3. eval says that images could not be read ---------------------------------------------------

def _png(word):
    image = Image.new("RGB", (100, 32), "white")
    ImageDraw.Draw(image).text((8, 10), word, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_lmdb(path, samples):
    """An LMDB the way make-lmdb writes one: image-/label-NNNNNNNNN (1-based) and num-samples."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for number, (image, label) in enumerate(samples, 1):
            txn.put(b"image-%09d" % number, image)
            txn.put(b"label-%09d" % number, label.encode())
        txn.put(b"num-samples", str(len(samples)).encode())
    env.close()
    return path


def test_eval_says_how_many_images_could_not_be_read_and_how_they_were_scored(tmp_path):
    words = [f"w{i}" for i in range(20)]
    damaged = {3, 7, 8, 15, 20}   # LMDB numbers (1-based)
    good = [(_png(word), word) for word in words]
    broken = [(b"not an image at all" if number in damaged else _png(word), word)
              for number, word in enumerate(words, 1)]
    good_path = write_lmdb(tmp_path / "good.lmdb", good)
    broken_path = write_lmdb(tmp_path / "broken.lmdb", broken)

    run = cnnctc("-q", "eval", "--model", BUNDLED_MODEL, "--data", good_path, broken_path)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr   # one line per dataset with unreadable images, none for good.lmdb
    line = lines[0]
    assert line.startswith("cnnctc: warning: broken.lmdb: 5 of its 20 scored images could not be read"), line
    assert "(the first: image-000000003)" in line, line
    assert "zoo protocol" in line and "'[dummy_label]'" in line and "counted wrong" in line, line
    # The table keeps its format.
    table = run.stdout.splitlines()
    assert table[1].split() == ["dataset", "kept", "skipped", "accuracy", "%", "1-N.E.D."], table
    assert table[3].split()[:3] == ["good.lmdb", "20", "0"] and table[4].split()[:3] == ["broken.lmdb", "20", "0"]

    # --json already counts them; the warning says it there too, and names the protocol's truth.
    run = cnnctc("-q", "eval", "--model", BUNDLED_MODEL, "--data", broken_path, "--json", "--protocol", "dtrb")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["total"]["unreadable"] == 5
    assert len(run.stderr.splitlines()) == 1 and "dtrb protocol" in run.stderr and "'dummylabel'" in run.stderr

    # A single unreadable image is named by its key.
    one = write_lmdb(tmp_path / "one.lmdb", [(b"\x89PNG\r\n\x1a\n broken", "w0"), *good[1:4]])
    run = cnnctc("-q", "eval", "--model", BUNDLED_MODEL, "--data", one)
    assert run.returncode == 0 and "1 of its 4 scored images could not be read (key image-000000001)" in run.stderr


# --- 4 and 5. A MindSpore Recognizer leaves the caller's process alone ---------------------------

def run_script(tmp_path, body, *args, timeout=400):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


@pytest.fixture(scope="module")
def mindir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_mindir") / "mini.mindir"
    run = cnnctc("-q", "export", "--model", BUNDLED_MODEL, "--format", "mindir", "--out", out)
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def word(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep_word") / "word.png"
    path.write_bytes(_png("hello"))
    return path


MODE = """
    import json, sys
    import numpy as np
    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE)   # the caller's choice
    import cnnctc
    from cnnctc.transforms import preprocess_image
    from PIL import Image
    reader = cnnctc.Recognizer(model="cnnctc/mini-synth", runtime="mindspore")
    after_init = ms.get_context("mode")
    batch = np.stack([preprocess_image(Image.open(sys.argv[1]), reader.manifest.preprocess)] * 3)
    pynative = reader.logits(batch)
    after_run = ms.get_context("mode")
    mindir = cnnctc.Recognizer(sys.argv[2])
    after_mindir = ms.get_context("mode")
    from_mindir = mindir.logits(batch)
    ms.set_context(mode=ms.GRAPH_MODE)   # the same reader in graph mode reads the same
    graph = reader.logits(batch)
    print(json.dumps({"modes": [after_init, after_run, after_mindir], "pynative": ms.PYNATIVE_MODE,
                      "same": float(np.abs(pynative - graph).max()),
                      "same_mindir": float(np.abs(from_mindir - graph).max())}))
"""


def test_a_mindspore_recognizer_leaves_pynative_mode_and_reads_the_same(tmp_path, word, mindir):
    run = run_script(tmp_path, MODE, word, mindir)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["modes"] == [outcome["pynative"]] * 3, outcome
    assert outcome["same"] < 1e-4 and outcome["same_mindir"] < 1e-3, outcome


EXIT = """
    import atexit, sys
    import multiprocessing   # changes the order of the interpreter's teardown: MindSpore's Cells then complain
    import cnnctc
    reader = cnnctc.Recognizer(sys.argv[1], runtime="mindspore") if sys.argv[1] != "-" else \\
        cnnctc.Recognizer(model="cnnctc/mini-synth", runtime="mindspore")
    print(reader.recognize([sys.argv[2]])[0].text)
    atexit.register(lambda: print("at exit:", reader.recognize([sys.argv[2]])[0].text))   # the user's own hook
"""


@pytest.mark.parametrize("source", ["checkpoint", "mindir"])
def test_a_script_with_a_mindspore_recognizer_exits_quietly(tmp_path, word, mindir, source):
    run = run_script(tmp_path, EXIT, mindir if source == "mindir" else "-", word)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]
    first, at_exit = run.stdout.splitlines()
    assert at_exit == f"at exit: {first}"   # a hook registered after the Recognizer still reads with it
