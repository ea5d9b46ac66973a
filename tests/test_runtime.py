"""--runtime auto: a checkpoint runs on onnxruntime through an ONNX export kept in the cache.

Real MindSpore, onnx and onnxruntime, real files and processes. The first run exports in this
process (which has MindSpore); the runs that must not import MindSpore are fresh processes.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms  # noqa: F401  (MindSpore before onnx in this process: SPEC section 9)

from conftest import run_in_process, seed_weights, subprocess_env, write_manifest
from cnnctc.checkpoint import save_checkpoint
from cnnctc.errors import CnnctcError
from cnnctc.loader import configure_context
from cnnctc.network import CNNCTC
from cnnctc.recognizer import Recognizer
from cnnctc.render import write_word_images
from cnnctc.runtime import _locate, cached_onnx, cpu_only, export_cache_dir
from cnnctc.transforms import find_images

DIGITS = "0123456789"
WIDTH = 32
# auto means onnxruntime only on a CPU-only machine (no /dev/nvidia<N>, no /dev/davinci<N>)
pytestmark = pytest.mark.skipif(not cpu_only(), reason="a GPU or Ascend device is here: auto runs MindSpore")


def random_checkpoint(path, seed):
    """A narrow digits network with random weights whose columns pick varied classes."""
    configure_context("CPU")
    net = CNNCTC(num_class=len(DIGITS) + 1, output_channel=WIDTH)
    seed_weights(net, seed)
    return save_checkpoint(net, path, metadata={"alphabet": DIGITS})


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    write_word_images(root / "words", 6, alphabet=DIGITS, seed=3)
    return sorted(p for p in find_images([root / "words"]) if p.endswith(".png"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The seed-1 checkpoint and its ONNX export as the cache holds it, made once for the module."""
    root = tmp_path_factory.mktemp("prepared")
    path = random_checkpoint(root / "digits.ckpt", seed=1)
    return path, cached_onnx(path, cache_dir=root / "cache").path


@pytest.fixture
def checkpoint(tmp_path, prepared):
    """A copy of the seed-1 checkpoint of this test's own (tests rewrite and touch it)."""
    return shutil.copyfile(prepared[0], tmp_path / "digits.ckpt")


def stamp_of(export):
    """The stamp beside a cached export: the SHA-256 it was written with."""
    return export.with_name(export.name + ".verified")


def seed_cache(prepared):
    """The module's export of the checkpoint put in this test's cache, under the name auto looks for
    (the bytes' SHA-256 and the settings' hash), with its stamp: for tests whose point is not the
    first export."""
    export_cache_dir().mkdir(parents=True)
    shutil.copyfile(stamp_of(prepared[1]), stamp_of(export_cache_dir() / prepared[1].name))
    return shutil.copyfile(prepared[1], export_cache_dir() / prepared[1].name)


def user_env(**extra):
    env = subprocess_env(**extra)   # CNNCTC_CACHE_DIR of this test comes along
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)   # MindSpore set it in this process
    return env


def cnnctc(*args, **env):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=user_env(**env),
                          capture_output=True, text=True, timeout=600)


def cached_exports(root=None):
    root = Path(root or os.environ["CNNCTC_CACHE_DIR"])
    return sorted(p for p in root.rglob("*.onnx")) if root.exists() else []


def texts(reader, images):
    return [p.text for p in reader.recognize(images)]


def test_this_machine_is_cpu_only_and_an_explicit_device_decides():
    assert cpu_only() and cpu_only("cpu")
    assert not cpu_only("GPU") and not cpu_only("Ascend")
    with pytest.raises(CnnctcError, match="unknown device target 'TPU'"):
        cpu_only("TPU")


def test_auto_exports_once_and_a_fresh_process_reads_the_same_text_without_mindspore(checkpoint, words):
    on_mindspore = Recognizer(checkpoint, runtime="mindspore")
    assert on_mindspore.network is not None and not cached_exports()
    reader = Recognizer(checkpoint)   # auto, CPU-only here: exported into the cache now
    assert reader.network is None and type(reader.runner).__name__ == "OnnxRunner"
    exported = cached_exports()
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert len(exported) == 1 and exported[0].parent == export_cache_dir()
    assert exported[0].name.startswith(sha256 + ".")
    expected = texts(on_mindspore, words)
    assert len(set(expected)) > 1   # the weights read different words: the comparison means something
    assert texts(reader, words) == expected
    zeros = np.zeros((8, 3, 32, 100), np.float32)   # the shape the six words ran in on MindSpore: compiled already
    np.testing.assert_allclose(reader.logits(zeros), on_mindspore.logits(zeros), rtol=1e-4, atol=1e-4)
    before = exported[0].stat().st_mtime_ns

    code = ("import sys, json\nfrom cnnctc.recognizer import Recognizer\n"
            f"reader = Recognizer({str(checkpoint)!r})\n"
            f"print(json.dumps([[p.text for p in reader.recognize({words!r})], 'mindspore' in sys.modules]))\n")
    run = subprocess.run([sys.executable, "-c", code], env=user_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [expected, False]
    assert cached_exports() == exported and exported[0].stat().st_mtime_ns == before   # found, not redone

    run = cnnctc("predict", "--format", "tsv", "--checkpoint", checkpoint, *words)
    assert run.returncode == 0, run.stderr
    assert [line.split("\t")[1] for line in run.stdout.splitlines()] == expected
    assert "MindSpore" not in run.stderr and "exporting" not in run.stderr


def test_a_changed_checkpoint_is_exported_again_and_the_old_export_never_used(checkpoint, words, prepared):
    seeded = seed_cache(prepared)
    first = texts(Recognizer(checkpoint), words)
    old = cached_exports()
    assert old == [seeded]   # found under the name auto gives it
    random_checkpoint(checkpoint, seed=2)   # other weights under the same name
    expected = texts(Recognizer(checkpoint, runtime="mindspore"), words)
    assert expected != first
    assert texts(Recognizer(checkpoint), words) == expected
    new = [p for p in cached_exports() if p not in old]
    assert len(new) == 1 and new[0].name.startswith(hashlib.sha256(checkpoint.read_bytes()).hexdigest())

    # A cached file under the right name that came from other weights is refused and replaced, also
    # with the stamp it was written with beside it (so that its own metadata is what refuses it).
    new[0].write_bytes(old[0].read_bytes())
    stamp_of(new[0]).write_bytes(stamp_of(old[0]).read_bytes())
    assert texts(Recognizer(checkpoint), words) == expected
    from cnnctc.onnx_runtime import OnnxRunner, metadata_values
    source = metadata_values(OnnxRunner(new[0]).metadata)["source_sha256"]
    assert source == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


# Adds 1 to the first float initializer of an ONNX file, its metadata kept. Its own process: onnx's protobuf.
EDIT_WEIGHTS = r"""
import sys
import numpy as np
import onnx
from onnx import numpy_helper
model = onnx.load(sys.argv[1])
tensor = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + np.float32(1), tensor.name))
onnx.save(model, sys.argv[2])
"""


def test_a_cached_export_whose_weights_were_edited_is_exported_again_never_read(checkpoint, words, prepared,
                                                                                 tmp_path, caplog):
    seeded = seed_cache(prepared)
    before = Recognizer(checkpoint).recognize(words)
    run = subprocess.run([sys.executable, "-c", EDIT_WEIGHTS, str(seeded), str(tmp_path / "edited.onnx")],
                         env=user_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    edited = Recognizer(tmp_path / "edited.onnx").recognize(words)
    assert [p.confidence for p in edited] != [p.confidence for p in before]   # the edit changes readings
    seeded.write_bytes((tmp_path / "edited.onnx").read_bytes())   # the same metadata, other weights
    with caplog.at_level("INFO", logger="cnnctc"):
        again = Recognizer(checkpoint).recognize(words)
    assert "was changed since it was exported; exporting again" in caplog.text
    assert [(p.text, p.confidence) for p in again] == [(p.text, p.confidence) for p in before]
    assert cached_exports() == [seeded]
    assert json.loads(stamp_of(seeded).read_text())["sha256"] == hashlib.sha256(seeded.read_bytes()).hexdigest()


def test_a_checkpoint_touched_but_not_changed_is_hashed_again_and_its_export_reused(checkpoint, prepared, caplog):
    seeded = seed_cache(prepared)
    Recognizer(checkpoint)
    exported = cached_exports()
    assert exported == [seeded]   # found under the name auto gives it
    stamp = next((export_cache_dir() / "sources").glob("*.json"))
    assert json.loads(stamp.read_text())["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    os.utime(checkpoint, ns=(1, 1))   # a new mtime and ctime: the stamp no longer vouches for it
    with caplog.at_level("INFO", logger="cnnctc"):
        Recognizer(checkpoint)
    assert "exporting" not in caplog.text and cached_exports() == exported
    assert json.loads(stamp.read_text())["mtime_ns"] == 1


def test_two_first_runs_at_once_export_once(checkpoint, words):
    from cnnctc._output import output_lock
    out, _, _, _ = _locate(checkpoint, None, None, None, {})
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    with output_lock(out, what="exporting"):   # both runs reach the lock while this test holds it
        for _ in range(2):
            runs.append(subprocess.Popen([sys.executable, "-m", "cnnctc", "predict", "--format", "tsv",
                                          "--checkpoint", str(checkpoint), *words], env=user_env(),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for run in runs:   # each says it waits (a line on its stderr), then the lock is released
            seen = []
            for line in run.stderr:
                seen.append(line)
                if "waiting for another process" in line:
                    break
            assert any("waiting for another process exporting" in line for line in seen), seen
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum("to ONNX once" in err for _, err in outputs) == 1
    assert outputs[0][0] == outputs[1][0] and len(outputs[0][0].splitlines()) == len(words)
    assert cached_exports() == [out]
    # No lock or work folder left; the stamp holds the SHA-256 of what was written.
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, stamp_of(out).name, "sources"]
    assert json.loads(stamp_of(out).read_text())["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_runtime_mindspore_and_onnxruntime_on_the_command_line(checkpoint, words):
    cnnctc = run_in_process   # what --runtime chooses is the point, not a fresh process (those are above)
    run = cnnctc("predict", "--runtime", "mindspore", "--format", "tsv", "--checkpoint", checkpoint, *words)
    assert run.returncode == 0, run.stderr
    assert "MindSpore 2" in run.stderr and not cached_exports()
    on_mindspore = [line.split("\t")[:2] for line in run.stdout.splitlines()]
    run = cnnctc("predict", "--runtime", "onnxruntime", "--format", "tsv", "--checkpoint", checkpoint, *words)
    assert run.returncode == 0, run.stderr
    assert [line.split("\t")[:2] for line in run.stdout.splitlines()] == on_mindspore   # same texts
    assert len(on_mindspore) == len(words) and len(cached_exports()) == 1
    run = cnnctc("predict", "--runtime", "tensorrt", "--checkpoint", checkpoint, *words)
    assert run.returncode == 2 and "invalid choice: 'tensorrt'" in run.stderr


def test_eval_reads_the_same_both_ways(checkpoint, tmp_path):
    from cnnctc.data import make_lmdb
    write_word_images(tmp_path / "w", 8, alphabet=DIGITS, seed=4)
    make_lmdb(tmp_path / "w", tmp_path / "w" / "labels.tsv", tmp_path / "w.lmdb")
    results = [run_in_process("eval", "--json", "--runtime", runtime, "--checkpoint", checkpoint,
                              "--data", tmp_path / "w.lmdb") for runtime in ("mindspore", "auto")]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert json.loads(results[0].stdout) == json.loads(results[1].stdout)
    assert "onnxruntime" in results[1].stderr and len(cached_exports()) == 1


def test_a_hub_uid_exports_beside_its_cached_checkpoint(checkpoint, tmp_path, words, monkeypatch):
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    manifest = write_manifest(tmp_path / "manifest.json", uid="user/test/digits", file_name="digits.ckpt",
                              url="https://example.invalid/digits.ckpt", sha256=sha256, alphabet=DIGITS,
                              network={"num_class": 11, "final_feature_width": 26, "output_channel": WIDTH})
    cache = Path(os.environ["CNNCTC_CACHE_DIR"])
    (cache / "user" / "test").mkdir(parents=True)
    os.link(checkpoint, cache / "user" / "test" / "digits.ckpt")
    monkeypatch.setenv("CNNCTC_OFFLINE", "1")
    expected = texts(Recognizer(manifest=manifest, runtime="mindspore"), words)
    assert texts(Recognizer(manifest=manifest), words) == expected
    assert [p.parent for p in cached_exports()] == [cache / "user" / "test"]
    assert cached_exports()[0].name.startswith(sha256 + ".")
    run = cnnctc("predict", "--format", "tsv", "--manifest", manifest, *words, CNNCTC_OFFLINE=1)
    assert run.returncode == 0, run.stderr
    assert [line.split("\t")[1] for line in run.stdout.splitlines()] == expected
    assert "MindSpore" not in run.stderr


def test_an_export_that_cannot_be_written_falls_back_to_mindspore_under_auto(checkpoint, words, monkeypatch,
                                                                           tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CNNCTC_CACHE_DIR", str(blocked))
    reader = Recognizer(checkpoint)
    assert reader.network is not None   # MindSpore reads it
    with pytest.raises(CnnctcError):
        Recognizer(checkpoint, runtime="onnxruntime")


def test_runtime_and_file_kinds_that_do_not_go_together(checkpoint, tmp_path, prepared):
    with pytest.raises(CnnctcError, match="runtime must be one of auto, mindspore, onnxruntime"):
        Recognizer(checkpoint, runtime="tensorrt")
    onnx_file = shutil.copyfile(prepared[1], tmp_path / "m.onnx")   # an export of the checkpoint
    with pytest.raises(CnnctcError, match=r"an \.onnx file runs on onnxruntime, not mindspore"):
        Recognizer(onnx_file, runtime="mindspore")
    for device in ("GPU", "ascend"):   # onnxruntime's CPU provider: another device is refused, not ignored
        with pytest.raises(CnnctcError, match=r"m.onnx: an \.onnx file runs on onnxruntime's CPU provider, not on "
                                              f"{device.capitalize() if device == 'ascend' else device}"):
            Recognizer(onnx_file, device_target=device)
    assert Recognizer(onnx_file, device_target="cpu").alphabet == DIGITS
    # An exported file describes itself: a model or manifest beside it would be silently ignored.
    with pytest.raises(CnnctcError, match=r"m.onnx: an exported file carries its own description"):
        Recognizer(onnx_file, model="cnnctc/mini-synth")
    from cnnctc.registry import get_model
    with pytest.raises(CnnctcError, match=r"leave out --model and --manifest"):
        Recognizer(onnx_file, manifest=get_model("cnnctc/mini-synth").manifest)
    with pytest.raises(CnnctcError, match="a given network runs on mindspore"):
        Recognizer(network=CNNCTC(num_class=11, output_channel=WIDTH), runtime="onnxruntime")
