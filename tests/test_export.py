"""Export to ONNX / MindIR / AIR, the onnxruntime path and int8 quantization, end to end.

The network is the bundled cnnctc/mini-synth, a narrow CNN-CTC trained on rendered words: a random
network is no stand-in for the int8 check (its columns are near-ties that any rounding flips,
75-90% agreement measured), and trained weights make the texts compared below real words.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mindspore as ms  # MindSpore before onnx in this process (SPEC section 9); onnx is imported lazily

from conftest import as_foreground_job, run_in_process, subprocess_env
from cnnctc.data import make_lmdb
from cnnctc.decoding import ctc_greedy_decode
from cnnctc.errors import CnnctcError
from cnnctc.evaluation import evaluate
from cnnctc.export import MindIRRunner, export_model, sidecar_path
from cnnctc.loader import load_model
from cnnctc.onnx_runtime import OnnxRunner
from cnnctc.recognizer import Recognizer
from cnnctc.registry import BUNDLED_MODEL, get_model
from cnnctc.render import find_fonts, write_word_images
from cnnctc.transforms import find_images, preprocess

ALPHABET = get_model(BUNDLED_MODEL).manifest.alphabet  # 0-9a-z
WIDTH = 64


def user_env(**extra):
    # MindSpore sets this variable in the test process when imported; a user's shell does not have it.
    env = subprocess_env(**extra)
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    return env


def cnnctc(*args):
    return run_in_process(*args)   # the command's behaviour is the point here, not a new process's start


def python(code, **env):
    return subprocess.run([sys.executable, "-c", code], env=user_env(**env), capture_output=True, text=True,
                          timeout=600)


def leftovers(folder, keep=()):
    """Files in ``folder`` other than ``keep`` (temporary names included)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained narrow network (the bundled cnnctc/mini-synth, copied), and rendered test data."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = root / "mini-synth.ckpt"
    shutil.copyfile(get_model(BUNDLED_MODEL).bundled, checkpoint)
    font = (find_fonts() or [None])[0]
    # Labelled words for predict/eval, and calibration images with an unreadable file among them.
    write_word_images(root / "words", 24, alphabet=ALPHABET, fonts=[font], seed=7)
    make_lmdb(root / "words", root / "words" / "labels.tsv", root / "words.lmdb")
    write_word_images(root / "calib", 48, alphabet=ALPHABET, fonts=[font], seed=8)
    (root / "calib" / "labels.tsv").unlink()
    (root / "calib" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root, checkpoint


@pytest.fixture(scope="module")
def exported(trained):
    """The checkpoint exported to ONNX by the CLI, and to MindIR by the API (both dynamic batch)."""
    root, checkpoint = trained
    run = cnnctc("export", "--checkpoint", checkpoint, "--format", "onnx", "--out", root / "digits.onnx")
    assert run.returncode == 0, run.stderr
    assert "digits.onnx: ONNX, dynamic batch" in run.stdout
    mindir = export_model(root / "digits.mindir", format="mindir", checkpoint=checkpoint)
    return root / "digits.onnx", mindir


def word_images(root):
    return sorted(p for p in find_images([root / "words"]) if p.endswith(".png"))


def test_onnx_and_mindir_logits_equal_mindspore_at_any_batch(trained, exported):
    import onnx
    root, checkpoint = trained
    onnx_path, mindir_path = exported
    network = load_model(checkpoint, device_target="CPU").network
    onnx_runner, mindir_runner = OnnxRunner(onnx_path), MindIRRunner(mindir_path, device_target="CPU")
    real = preprocess(word_images(root))
    noise = np.random.default_rng(1).standard_normal((16, 3, 32, 100)).astype(np.float32)
    largest = np.concatenate([real[:8], noise[:8]])
    # Each image's logits do not depend on its batch: the network runs (and compiles) once, the files at every size.
    logits = network(ms.Tensor(largest)).asnumpy()
    for batch in (real[:1], real[:5], largest):
        expected = logits[:len(batch)]
        scale = np.abs(expected).max()
        for runner in (onnx_runner, mindir_runner):
            actual = runner(batch)
            assert actual.shape == expected.shape == (len(batch), 26, len(ALPHABET) + 1)
            assert np.abs(actual - expected).max() / scale < 1e-5, (type(runner).__name__, len(batch))

    model = onnx.load(str(onnx_path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["logits"]
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param == "batch" and not first.HasField("dim_value"), value.name
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}   # every value is JSON
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert meta["alphabet"] == ALPHABET and meta["blank_index"] == len(ALPHABET)
    assert meta["mean"] == [121.58949, 123.93914, 123.418655]
    assert meta["std"] == [65.70353, 65.142426, 68.61079]
    assert (meta["height"], meta["max_width"], meta["resample"], meta["pad"]) == (32, 100, "bicubic",
                                                                                 "repeat-last-column")
    # A copy of the bundled model's file: the export names that model, not the hub's.
    assert meta["source_uid"] == BUNDLED_MODEL and meta["source_sha256"] == sha
    assert meta["source_checkpoint"] == "mini-synth.ckpt"
    manifest = meta["cnnctc_manifest"]
    assert manifest["alphabet"] == ALPHABET and manifest["network"]["output_channel"] == WIDTH
    assert onnx_runner.manifest.alphabet == mindir_runner.manifest.alphabet == ALPHABET
    assert onnx_runner.manifest.preprocess == mindir_runner.manifest.preprocess

    side = json.loads(sidecar_path(mindir_path).read_text())
    assert side["alphabet"] == ALPHABET and side["source_sha256"] == sha and side["batch_size"] is None
    graph = ms.nn.GraphCell(ms.load(str(mindir_path)))  # what a user of MindSpore does with the file
    assert np.allclose(graph(ms.Tensor(real[:2])).asnumpy(), logits[:2], atol=1e-5)
    assert leftovers(root, keep={"mini-synth.ckpt", "words", "words.lmdb", "calib", "digits.onnx", "digits.mindir",
                                 "digits.mindir.json"}) == []


def test_a_fixed_batch_file_reads_any_number_of_images(trained, exported, tmp_path):
    root, checkpoint = trained
    path = export_model(tmp_path / "four.onnx", checkpoint=checkpoint, batch_size=4)
    runner = OnnxRunner(path)
    assert runner.session.get_inputs()[0].shape == [4, 3, 32, 100] and runner.batch_size == 4
    batch = preprocess(word_images(root)[:7])
    assert np.allclose(runner(batch), OnnxRunner(exported[0])(batch), atol=1e-5)


def test_predict_and_eval_on_exported_files_read_the_same_texts(trained, exported):
    root, checkpoint = trained
    images = word_images(root)
    reference = Recognizer(checkpoint, device_target="CPU")
    expected = [(p.text, p.confidence) for p in reference.recognize(images)]
    truth = dict(line.split("\t") for line in (root / "words" / "labels.tsv").read_text().splitlines())
    assert sum(text == truth[os.path.basename(p)] for p, (text, _) in zip(images, expected)) >= len(images) // 2
    results, total = evaluate(reference, [root / "words.lmdb"])
    for model in exported:
        run = cnnctc("predict", "--checkpoint", model, "--format", "tsv", *images)
        assert run.returncode == 0, run.stderr
        rows = [line.split("\t") for line in run.stdout.splitlines()]
        assert [row[0] for row in rows] == images
        assert [row[1] for row in rows] == [text for text, _ in expected]
        assert np.allclose([float(row[2]) for row in rows], [c for _, c in expected], atol=1e-3)
        run = cnnctc("eval", "--checkpoint", model, "--data", root / "words.lmdb", "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["total"] == total.as_dict()


def test_the_onnx_path_never_imports_mindspore(trained, exported):
    root, _ = trained
    run = python("import sys, cnnctc\n"
                 f"reader = cnnctc.Recognizer({str(exported[0])!r})\n"
                 f"print(reader.recognize([{word_images(root)[0]!r}])[0].text)\n"
                 "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mindspore' or m in "
                 "('cnnctc.loader', 'cnnctc.checkpoint', 'cnnctc.network', 'cnnctc._mindspore', 'onnx')))")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "[]"


def test_int8_model_runs_and_agrees_with_the_float_model(trained, exported, tmp_path):
    import onnx
    root, _ = trained
    out = tmp_path / "digits.int8.onnx"
    run = cnnctc("quantize", exported[0], "--calib", root / "calib", root / "words.lmdb", "--out", out)
    assert run.returncode == 0, run.stderr
    assert "calibrated on 72 images (1 unreadable skipped)" in run.stdout   # 48 + 24, broken.png skipped
    assert "broken.png" in run.stderr
    reported = float(run.stdout.split("calibration images: ")[1].split("%")[0])

    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "BatchNormalization" not in ops
    initializers = {t.name: t for t in model.graph.initializer}
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and initializers.get(n.input[0]) is not None and initializers[n.input[0]].data_type == 3  # int8
                   and len(initializers[n.input[0]].dims) == 4]
    assert per_channel and all(len(initializers[n.input[1]].dims) == 1 and initializers[n.input[1]].dims[0] > 1
                               for n in per_channel)  # one scale per output channel
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["alphabet"] == ALPHABET and "cnnctc_manifest" in meta and "int8" in meta["quantization"]
    assert out.stat().st_size < exported[0].stat().st_size / 2

    calib = preprocess([p for p in find_images([root / "calib"]) if not p.endswith("broken.png")])
    words = preprocess(word_images(root))
    float_runner, int8_runner = OnnxRunner(exported[0]), OnnxRunner(out)
    for batch in (calib, words):
        expected, actual = float_runner(batch), int8_runner(batch)
        columns = expected.argmax(-1)
        assert len(np.unique(columns)) > 5 and (columns != len(ALPHABET)).mean() > 0.1  # real decisions, not all blank
        assert (actual.argmax(-1) == columns).mean() >= 0.95
    assert reported >= 95
    expected = [p.text for p in ctc_greedy_decode(float_runner(words), ALPHABET)]
    texts = [p.text for p in Recognizer(out).recognize(word_images(root))]
    assert np.mean([a == b for a, b in zip(texts, expected)]) >= 0.8


def test_quantize_needs_calibration_images_and_keeps_existing_files(trained, exported, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    out = tmp_path / "q.onnx"
    run = cnnctc("quantize", exported[0], "--calib", empty, "--out", out, "--quiet")
    assert run.returncode == 1 and run.stderr.startswith("cnnctc: error: no readable calibration images")
    assert len(run.stderr.strip().splitlines()) == 1 and not out.exists() and leftovers(tmp_path) == ["empty"]
    # Only unreadable images: the line says why the first was; a --calib path that is not there is a typo.
    (empty / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run = run_in_process("quantize", exported[0], "--calib", empty, "--out", out, "--quiet")
    [line] = [l for l in run.stderr.splitlines() if l.startswith("cnnctc: error:")]
    assert run.returncode == 1 and f"(1 inputs could not be read; the first: {empty / 'broken.png'}" in line
    run = run_in_process("quantize", exported[0], "--calib", trained[0] / "calib", tmp_path / "calbi", "--out", out)
    assert run.returncode == 1 and run.stderr == f"cnnctc: error: --calib {tmp_path / 'calbi'}: no such file or folder\n"
    run = run_in_process("quantize", exported[0], "--calib", trained[0] / "calib", tmp_path / "nodir" / "*.png", "--out",
                         out)
    assert run.returncode == 1 and "*.png: the pattern matches no file" in run.stderr
    assert not out.exists() and leftovers(tmp_path) == ["empty"]
    out.write_bytes(b"mine")
    run = cnnctc("quantize", exported[0], "--calib", trained[0] / "calib", "--out", out)
    assert run.returncode == 1 and "already exists; use --overwrite" in run.stderr and out.read_bytes() == b"mine"
    run = cnnctc("quantize", trained[1], "--calib", trained[0] / "calib", "--out", tmp_path / "x.onnx", "--quiet")
    assert run.returncode == 1 and "not a readable ONNX model" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_air_on_cpu_fails_in_one_line_and_writes_nothing(trained, tmp_path):
    run = cnnctc("export", "--checkpoint", trained[1], "--format", "air", "--out", tmp_path / "model.air")
    assert run.returncode == 1
    assert run.stderr == "cnnctc: error: AIR export needs an Ascend device; use --format mindir or onnx\n"
    assert leftovers(tmp_path) == []


def test_export_refuses_to_overwrite_and_checks_the_suffix(trained, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"precious")
    run = cnnctc("export", "--checkpoint", trained[1], "--format", "onnx", "--out", out)
    assert run.returncode == 1 and out.read_bytes() == b"precious"
    assert run.stderr == f"cnnctc: error: {out} already exists; use --overwrite to replace it\n"
    run = cnnctc("export", "--checkpoint", trained[1], "--format", "mindir", "--out", tmp_path / "model.onnx2")
    assert run.returncode == 1 and "must end with .mindir" in run.stderr
    run = cnnctc("export", "--checkpoint", trained[1], "--model", "mindspore/1.3/cnnctc_mjstiiit", "--format", "onnx",
                 "--out", tmp_path / "x.onnx")
    assert run.returncode == 2 and "not allowed with argument" in run.stderr
    assert leftovers(tmp_path) == ["model.onnx"]


def test_no_partial_files_on_error_or_interrupt(trained, tmp_path, monkeypatch):
    import cnnctc.export as export
    tmp_path.chmod(0o755)  # MindSpore's exporter would make the folder it writes to 0700
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CnnctcError, match="not a readable MindSpore checkpoint"):
        export_model(tmp_path / "a.onnx", checkpoint=bad)
    assert leftovers(tmp_path) == ["bad.ckpt"]

    def interrupted(raw, final, *args):
        assert raw.is_file()  # MindSpore has written its file: now the user presses Ctrl-C
        raise KeyboardInterrupt
    monkeypatch.setattr(export, "_finish_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(tmp_path / "b.onnx", checkpoint=trained[1])
    assert leftovers(tmp_path) == ["bad.ckpt"] and tmp_path.stat().st_mode & 0o777 == 0o755


def _export_child(checkpoint, out):
    return subprocess.Popen([sys.executable, "-m", "cnnctc", "export", "--checkpoint", str(checkpoint), "--format",
                             "onnx", "--out", str(out)], env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=as_foreground_job)


def test_ctrl_c_while_the_export_compiles_is_one_line_and_after_it_changes_nothing(trained, tmp_path):
    """Ctrl-C while MindSpore compiles the export (or its check): `cnnctc: interrupted` alone, nothing left.
    Ctrl-C once the file is written and said: the export stands, and the process is not killed by the
    signal in its shutdown (MindSpore answers Ctrl-C with SIGTERM)."""
    child = _export_child(trained[1], tmp_path / "a.onnx")
    for line in child.stderr:
        if "GRAPH_MODE" in line:   # logged just before the graph is built and compiled
            break
    time.sleep(0.6)   # inside MindSpore's export compile here (about 2 s of it follow)
    child.send_signal(signal.SIGINT)
    _, rest = child.communicate(timeout=120)
    assert child.returncode == 130, (child.returncode, rest[-3000:])
    assert rest.strip().splitlines()[-1] == "cnnctc: interrupted"
    assert all(line.startswith("cnnctc: ") for line in rest.strip().splitlines()), rest[-3000:]
    assert leftovers(tmp_path) == []

    child = _export_child(trained[1], tmp_path / "b.onnx")
    assert "b.onnx: ONNX, dynamic batch" in child.stdout.readline()   # printed last, when all is done
    child.send_signal(signal.SIGINT)
    _, rest = child.communicate(timeout=120)
    # Mostly in the shutdown (exit 0); on a busy machine still in the command's last lines (130, one line).
    assert child.returncode in (0, 130), (child.returncode, rest[-3000:])
    assert child.returncode == 0 or rest.strip().splitlines()[-1] == "cnnctc: interrupted"
    assert "Traceback" not in rest and leftovers(tmp_path) == ["b.onnx"]
    assert OnnxRunner(tmp_path / "b.onnx").manifest.alphabet == ALPHABET   # whole, and in place


def test_the_user_importing_onnx_first_gets_one_line(trained):
    root, checkpoint = trained
    run = python("import onnx, cnnctc\n"
                 "try:\n"
                 f"    cnnctc.load({str(checkpoint)!r})\n"
                 "except cnnctc.CnnctcError as exc:\n"
                 "    print('CnnctcError:', exc)\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("CnnctcError: MindSpore cannot be imported after onnx") and "Traceback" not in run.stderr
    run = python("import onnx, sys\nfrom cnnctc.cli import main\n"
                 f"sys.exit(main(['predict', '--checkpoint', {str(checkpoint)!r}, {word_images(root)[0]!r}]))")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnctc: error: MindSpore cannot be imported after onnx")


def test_quantize_export_and_predict_in_one_process(trained, exported, tmp_path):
    root, checkpoint = trained
    image = word_images(root)[0]
    run = python(
        "import sys, cnnctc\n"
        "from cnnctc.quantize import quantize_model\n"
        "from cnnctc.export import export_model\n"
        # quantize first (onnx is loaded, MindSpore is not), then MindSpore work in the same process
        f"quantize_model({str(exported[0])!r}, [{str(root / 'calib')!r}], {str(tmp_path / 'a.int8.onnx')!r})\n"
        f"assert 'mindspore' not in sys.modules\n"
        f"net = cnnctc.load({str(checkpoint)!r})\n"
        f"onnx_file = export_model({str(tmp_path / 'b.onnx')!r}, checkpoint={str(checkpoint)!r})\n"
        f"quantize_model(onnx_file, [{str(root / 'calib')!r}], {str(tmp_path / 'b.int8.onnx')!r})\n"
        "for model in (onnx_file, " + repr(str(tmp_path / "b.int8.onnx")) + ", " + repr(str(checkpoint)) + "):\n"
        f"    print(cnnctc.Recognizer(model).recognize([{image!r}])[0].text)\n")
    assert run.returncode == 0, run.stderr
    texts = run.stdout.splitlines()
    assert len(texts) == 3 and texts[0] == texts[2]


def test_exported_files_without_their_description_fail_in_one_line(trained, exported, tmp_path, monkeypatch):
    import onnx
    model = onnx.load(str(exported[0]))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(CnnctcError, match=r"bare.onnx: an ONNX model without cnnctc metadata .*cnnctc export"):
        Recognizer(tmp_path / "bare.onnx")
    (tmp_path / "bare.mindir").write_bytes(exported[1].read_bytes())
    with pytest.raises(CnnctcError, match=r"bare.mindir.json is missing"):
        Recognizer(tmp_path / "bare.mindir")
    run = cnnctc("predict", "--checkpoint", tmp_path / "bare.mindir", word_images(trained[0])[0])
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        f"cnnctc: error: {tmp_path / 'bare.mindir.json'} is missing: it holds the alphabet and preprocessing of "
        "bare.mindir (cnnctc export writes it beside the model; copy it along)"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(CnnctcError, match=r"onnxruntime is needed to run \.onnx files .*pip install 'cnnctc\[onnx\]'"):
        OnnxRunner(exported[0])


def test_calibration_ranges_cover_every_image(exported, tmp_path):
    """An image only at the start of the calibration set still sets the input's range."""
    import onnx
    from onnx import numpy_helper
    from PIL import Image
    from cnnctc.quantize import quantize_model
    folder = tmp_path / "calib"
    folder.mkdir()
    contrast = np.full((32, 100, 3), 255, np.uint8)
    contrast[:, :50] = 0
    Image.fromarray(contrast).save(folder / "000.png")
    for i in range(1, 80):
        Image.fromarray(np.full((32, 100, 3), 128, np.uint8)).save(folder / f"{i:03d}.png")
    report = quantize_model(exported[0], [folder], tmp_path / "q.onnx", max_images=80)
    assert (report.images, report.skipped) == (80, 0)   # five calibration batches
    scales = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer
              if t.name == "images_scale"}
    low, high = (0 - 123.93914) / 65.142426, (255 - 121.58949) / 65.70353  # the normalized extremes
    assert abs(float(scales["images_scale"]) - (high - low) / 255) < 0.01 * (high - low) / 255


def test_an_out_with_a_space_or_non_ascii_letters_is_exported(trained, exported, tmp_path, monkeypatch, caplog):
    """MindSpore's exporter takes only ASCII letters, digits and -_.@:/ in the file name it writes:
    cnnctc has it write elsewhere and puts the file in place, also in a cache --runtime auto keeps."""
    import tempfile
    root, checkpoint = trained
    folder = tmp_path / "my models ü"
    folder.mkdir()
    # What an export killed with -9 left in the temporary folder: its process is gone, the next removes it.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "tmp" / f"cnnctc-export-{gone.pid}-abc").mkdir(parents=True)
    images = word_images(root)[:4]
    want = [p.text for p in Recognizer(exported[0]).recognize(images)]
    for name, fmt in (("日本 1.onnx", "onnx"), ("ü x.mindir", "mindir")):
        out = export_model(folder / name, format=fmt, checkpoint=checkpoint)
        assert [p.text for p in Recognizer(out).recognize(images)] == want
    assert leftovers(folder) == sorted(["日本 1.onnx", "ü x.mindir", "ü x.mindir.json"])
    assert leftovers(tmp_path / "tmp") == []
    monkeypatch.setenv("CNNCTC_CACHE_DIR", str(folder / "cache"))
    with caplog.at_level("INFO", logger="cnnctc"):
        assert [p.text for p in Recognizer(checkpoint, device_target="CPU").recognize(images)] == want
    assert "running on MindSpore" not in caplog.text and list((folder / "cache").rglob("*.onnx"))
