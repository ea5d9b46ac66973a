"""export and quantize under races, kills and full disks; exported files that lie are refused.

Real MindSpore, onnx and onnxruntime, real files, processes, locks and a real (tmpfs) full disk.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms  # MindSpore before onnx in this process (SPEC section 9)

from conftest import subprocess_env
from test_runtime import DIGITS, random_checkpoint
from cnnctc._output import put_in_place
from cnnctc.errors import CnnctcError
from cnnctc.export import MindIRRunner, export_model, sidecar_path
from cnnctc.onnx_runtime import OnnxRunner
from cnnctc.quantize import quantize_model
from cnnctc.recognizer import Recognizer
from cnnctc.render import write_word_images


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random digits checkpoint, its ONNX and MindIR exports, and calibration images."""
    root = tmp_path_factory.mktemp("outputs")
    ckpt = random_checkpoint(root / "digits.ckpt", seed=1)
    onnx_file = export_model(root / "digits.onnx", checkpoint=ckpt)
    mindir = export_model(root / "digits.mindir", format="mindir", checkpoint=ckpt)
    write_word_images(root / "calib", 8, alphabet=DIGITS, seed=2)
    return root, ckpt, onnx_file, mindir


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def user_env(**extra):
    env = subprocess_env(**extra)
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    return env


def cnnctc(*args, **env):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=user_env(**env),
                          capture_output=True, text=True, timeout=600)


def one_error_line(run):
    """The error line of a failed run: the last line, the only one that is an error, and no line of
    a native library (every line is cnnctc's own)."""
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert all(line.startswith("cnnctc: ") for line in lines), run.stderr
    assert [line for line in lines if line.startswith("cnnctc: error: ")] == lines[-1:], run.stderr
    return lines[-1]


# --- no command replaces one of its inputs -----------------------------------------------------

def test_quantize_never_replaces_its_input_by_name_symlink_or_hard_link(models, tmp_path, in_process_cli):
    root, _, onnx_file, _ = models
    model = tmp_path / "m.onnx"
    shutil.copyfile(onnx_file, model)
    before = digest(model)
    (tmp_path / "link.onnx").symlink_to(model)
    os.link(model, tmp_path / "hard.onnx")
    for out in (model, tmp_path / "link.onnx", tmp_path / "hard.onnx", tmp_path / "." / "m.onnx"):
        with pytest.raises(CnnctcError, match="is the input .*never replaces its own input"):
            quantize_model(model, [root / "calib"], out, overwrite=True)
    line = one_error_line(in_process_cli("quantize", model, "--calib", root / "calib", "--out", tmp_path / "hard.onnx",
                              "--overwrite"))
    assert "never replaces its own input" in line
    assert digest(model) == before and (tmp_path / "link.onnx").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.onnx", "link.onnx", "m.onnx"]


def test_export_never_replaces_its_checkpoint(models, tmp_path):
    _, ckpt, _, _ = models
    before = digest(ckpt)
    (tmp_path / "ckpt.onnx").symlink_to(ckpt)
    os.link(ckpt, tmp_path / "ckpt.mindir.json")
    with pytest.raises(CnnctcError, match="never replaces its own input"):
        export_model(tmp_path / "ckpt.onnx", checkpoint=ckpt, overwrite=True)
    with pytest.raises(CnnctcError, match=r"ckpt.mindir.json is the input"):
        export_model(tmp_path / "ckpt.mindir", format="mindir", checkpoint=ckpt, overwrite=True)
    assert digest(ckpt) == before and not (tmp_path / "ckpt.mindir").exists()


def test_export_never_replaces_the_manifest_it_read(models, tmp_path, in_process_cli):
    from cnnctc.registry import get_model
    manifest = json.dumps(get_model("cnnctc/mini-synth").manifest.to_dict())
    for name, fmt in (("man.onnx", "onnx"), ("m.mindir.json", "mindir")):
        (tmp_path / name).write_text(manifest)
    before = {name: digest(tmp_path / name) for name in ("man.onnx", "m.mindir.json")}
    with pytest.raises(CnnctcError, match="man.onnx is the input .*man.onnx; a command never replaces its own input"):
        export_model(tmp_path / "man.onnx", manifest=tmp_path / "man.onnx", overwrite=True)
    run = in_process_cli("export", "--manifest", tmp_path / "m.mindir.json", "--format", "mindir", "--out",
              tmp_path / "m.mindir", "--overwrite")
    assert "m.mindir.json is the input" in one_error_line(run)
    run = in_process_cli("export", "--format", "onnx", "--out", tmp_path / "man.onnx", "--overwrite",
              CNNCTC_MANIFEST=str(tmp_path / "man.onnx"))
    assert "man.onnx is the input" in one_error_line(run)
    assert {name: digest(tmp_path / name) for name in before} == before and not (tmp_path / "m.mindir").exists()


def test_a_file_of_the_users_where_the_lock_would_go_is_kept(models, tmp_path):
    _, ckpt, onnx_file, _ = models
    for name in (".e.onnx.lock", ".q.onnx.lock", ".cnnctc-render.r.lock"):
        (tmp_path / name).write_text("the user's own notes\n")
    with pytest.raises(CnnctcError, match=r"cannot create the lock file .*\.e\.onnx\.lock: it exists and is not "
                                          r"a lock file"):
        export_model(tmp_path / "e.onnx", checkpoint=ckpt)
    with pytest.raises(CnnctcError, match=r"\.q\.onnx\.lock: it exists and is not a lock file"):
        quantize_model(onnx_file, [models[0] / "calib"], tmp_path / "q.onnx")
    with pytest.raises(CnnctcError, match=r"it exists and is not a lock file"):
        write_word_images(tmp_path / "r", 2)
    for name in (".e.onnx.lock", ".q.onnx.lock", ".cnnctc-render.r.lock"):
        assert (tmp_path / name).read_text() == "the user's own notes\n", name
    assert sorted(os.listdir(tmp_path)) == [".cnnctc-render.r.lock", ".e.onnx.lock", ".q.onnx.lock"]


def test_an_export_given_as_a_manifest_says_to_give_it_as_checkpoint(models, in_process_cli):
    root, _, onnx_file, mindir = models
    image = next((root / "calib").glob("*.png"))
    line = one_error_line(in_process_cli("predict", "--manifest", onnx_file, image))
    assert f"{onnx_file} is a model file, not a manifest: give it as --checkpoint" in line
    line = one_error_line(in_process_cli("predict", "--manifest", sidecar_path(mindir), image))
    assert "describes an exported model (a .mindir's sidecar), not a manifest" in line


def test_the_mindir_description_obeys_overwrite(models, tmp_path):
    _, ckpt, _, _ = models
    out = tmp_path / "m.mindir"
    sidecar_path(out).write_text("the user's own notes")
    with pytest.raises(CnnctcError, match=r"m.mindir.json already exists; use --overwrite"):
        export_model(out, format="mindir", checkpoint=ckpt)
    assert sidecar_path(out).read_text() == "the user's own notes" and not out.exists()
    # --overwrite replaces only a description export wrote: the user's notes are never lost.
    with pytest.raises(CnnctcError, match=r"m.mindir.json is not a description cnnctc export wrote"):
        export_model(out, format="mindir", checkpoint=ckpt, overwrite=True)
    assert sidecar_path(out).read_text() == "the user's own notes" and not out.exists()
    sidecar_path(out).unlink()
    export_model(out, format="mindir", checkpoint=ckpt)
    os.utime(sidecar_path(out), (0, 0))
    export_model(out, format="mindir", checkpoint=ckpt, overwrite=True)   # its own description: replaced
    assert json.loads(sidecar_path(out).read_text())["model_file"] == "m.mindir" and out.is_file()
    assert sidecar_path(out).stat().st_mtime > 0


# --- two writers, a rename that re-checks, a killed run ----------------------------------------

HOLD_LOCK = """
import sys, time
from cnnctc._output import output_lock
with output_lock(__import__('pathlib').Path(sys.argv[1])):
    print('locked', flush=True)
    time.sleep(600)
"""


def test_a_second_writer_is_refused_while_the_first_runs_and_a_killed_one_blocks_nothing(models, tmp_path, in_process_cli):
    root, _, onnx_file, _ = models
    out = tmp_path / "int8.onnx"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=user_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        line = one_error_line(in_process_cli("quantize", onnx_file, "--calib", root / "calib", "--out", out))
        assert line == (f"cnnctc: error: {out}: another cnnctc command is writing it right now; wait for it to "
                        "finish, or choose another output")
        with pytest.raises(CnnctcError, match="another cnnctc command is exporting to it"):
            export_model(out, checkpoint=models[1])
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    report = quantize_model(onnx_file, [root / "calib"], out)   # the dead holder's lock went with it
    assert report.out == out and OnnxRunner(out).manifest.alphabet == DIGITS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]


def test_two_quantize_runs_to_one_new_out_one_writes_the_other_is_refused(models, tmp_path):
    root, _, onnx_file, _ = models
    out = tmp_path / "int8.onnx"
    command = [sys.executable, "-m", "cnnctc", "quantize", str(onnx_file), "--calib", str(root / "calib"),
               "--out", str(out)]
    runs = [subprocess.Popen(command, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(*run.communicate(timeout=600), run.returncode) for run in runs]
    results = [(code, stdout, stderr) for stdout, stderr, code in results]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    refused = next(err for code, _, err in results if code == 1)
    assert ("another cnnctc command is writing it" in refused or "already exists" in refused), refused
    written = next(stdout for code, stdout, _ in results if code == 0)
    assert written.startswith(f"{out}: int8 QDQ") and OnnxRunner(out).metadata.get("quantization")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]


def test_the_rename_never_replaces_a_file_that_appeared_meanwhile(models, tmp_path, monkeypatch):
    tmp, out = tmp_path / "new", tmp_path / "out.onnx"
    tmp.write_bytes(b"result")
    out.write_bytes(b"the user's")
    with pytest.raises(CnnctcError, match="already exists; use --overwrite"):
        put_in_place(tmp, out, overwrite=False)
    assert out.read_bytes() == b"the user's" and tmp.read_bytes() == b"result"

    # A file written at OUT by someone else while quantize runs (just before its rename).
    import cnnctc.quantize as quantize
    root, _, onnx_file, _ = models
    out = tmp_path / "late.onnx"
    real = quantize._agreement

    def agreement_then_another_writer(*args):
        out.write_bytes(b"written meanwhile")
        return real(*args)
    monkeypatch.setattr(quantize, "_agreement", agreement_then_another_writer)
    with pytest.raises(CnnctcError, match="late.onnx already exists"):
        quantize_model(onnx_file, [root / "calib"], out)
    assert out.read_bytes() == b"written meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.onnx", "new", "out.onnx"]


KILLED_QUANTIZE = """
import sys, time
import cnnctc.quantize as quantize
real = quantize._agreement
def agreement_then_wait(*args):
    print('in the work folder', flush=True)
    time.sleep(600)
quantize._agreement = agreement_then_wait
quantize.quantize_model(sys.argv[1], [sys.argv[2]], sys.argv[3])
"""


def test_what_a_killed_quantize_leaves_is_removed_by_the_next_run(models, tmp_path):
    root, _, onnx_file, _ = models
    out = tmp_path / "int8.onnx"
    run = subprocess.Popen([sys.executable, "-c", KILLED_QUANTIZE, str(onnx_file), str(root / "calib"), str(out)],
                           env=user_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline() == "in the work folder\n"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    left = [p for p in tmp_path.iterdir() if p.name != ".int8.onnx.lock"]
    assert len(left) == 1 and left[0].name.startswith(".int8.onnx.cnnctc-tmp-") and any(left[0].iterdir())
    (tmp_path / "other.onnx").write_bytes(b"not ours")
    quantize_model(onnx_file, [root / "calib"], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx", "other.onnx"]


def test_what_a_killed_export_leaves_is_removed_by_the_next_run(models, tmp_path):
    _, ckpt, _, _ = models
    dead = tmp_path / ".m.onnx.cnnctc-tmp-k9x2"   # the work folder a `kill -9` mid-export leaves
    dead.mkdir()
    (dead / "raw.onnx").write_bytes(b"x" * 1000)
    keep = tmp_path / ".m.onnx.notes"
    keep.write_text("the user's hidden file")
    export_model(tmp_path / "m.onnx", checkpoint=ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.onnx.notes", "m.onnx"]


# --- files that lie are refused when opened ----------------------------------------------------

def _rewritten(source, target, change):
    import onnx
    model = onnx.load(str(source))
    change(model, onnx)
    onnx.save(model, str(target))
    return target


def _set_meta(model, key, value):
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value


def test_an_onnx_file_with_a_nan_weight_is_refused_when_opened(models, tmp_path, in_process_cli):
    root, _, onnx_file, _ = models

    def poison(model, onnx):
        tensor = next(t for t in model.graph.initializer if t.data_type == 1 and len(t.dims) == 4)
        values = onnx.numpy_helper.to_array(tensor).copy()
        values.flat[7] = np.nan
        tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    bad = _rewritten(onnx_file, tmp_path / "nan.onnx", poison)
    with pytest.raises(CnnctcError, match=r"nan.onnx: the weight '.+' holds NaN or infinite values"):
        Recognizer(bad)
    image = next((root / "calib").glob("*.png"))
    line = one_error_line(in_process_cli("predict", "--format", "json", "--checkpoint", bad, image))
    assert "holds NaN or infinite values" in line


def test_finite_weights_that_overflow_the_outputs_are_refused_naming_the_model(models, tmp_path, in_process_cli):
    from cnnctc.checkpoint import read_checkpoint, save_checkpoint
    from cnnctc.loader import load_model
    root, ckpt, _, _ = models
    net = load_model(ckpt, device_target="CPU").network
    for parameter in net.get_parameters():   # every weight finite, and far too large
        parameter.set_data(ms.Tensor(np.full(parameter.shape, 3e38, np.float32)))
    huge = tmp_path / "huge.ckpt"
    save_checkpoint(net, huge, metadata={"alphabet": read_checkpoint(ckpt)["alphabet"]})
    image = next((root / "calib").glob("*.png"))
    run = in_process_cli("predict", "--checkpoint", huge, image, "--runtime", "mindspore", "--format", "json")
    line = one_error_line(run)
    assert line.startswith(f"cnnctc: error: {huge}: the network's outputs hold NaN or infinity") and run.stdout == ""


def test_a_mindir_with_a_nan_weight_is_refused_when_opened(models, tmp_path):
    from cnnctc.loader import load_model
    _, ckpt, _, mindir = models
    net = load_model(ckpt, device_target="CPU").network
    weight = net.get_parameters().__next__()
    weight.set_data(ms.Tensor(np.full(weight.shape, np.inf, np.float32)))
    ms.export(net, ms.Tensor(np.zeros((1, 3, 32, 100), np.float32)), file_name=str(tmp_path / "inf"),
              file_format="MINDIR")
    shutil.copyfile(sidecar_path(mindir), tmp_path / "inf.mindir.json")
    with pytest.raises(CnnctcError, match=r"inf.mindir: the weight '.+' holds NaN or infinite values"):
        MindIRRunner(tmp_path / "inf.mindir")


def test_onnx_files_whose_graph_contradicts_their_metadata_are_refused_when_opened(models, tmp_path, in_process_cli):
    import onnx
    from onnx import TensorProto, helper
    root, _, onnx_file, _ = models
    manifest = json.loads(OnnxRunner(onnx_file).metadata["cnnctc_manifest"])

    def with_manifest(**changes):
        """The manifest and its top-level copies changed alike: the file agrees with itself, not with its graph."""
        data = json.loads(json.dumps(manifest))
        for key, value in changes.items():
            if key == "height":
                data["preprocess"]["height"] = value
                data["input_shape"][2] = value
            else:
                data[key] = value
        data["network"].pop("num_class", None)

        def change(model, _):
            _set_meta(model, "cnnctc_manifest", json.dumps(data))
            for key, value in changes.items():
                _set_meta(model, key, json.dumps(value))
            if "alphabet" in changes:
                _set_meta(model, "num_class", json.dumps(len(changes["alphabet"]) + 1))
                _set_meta(model, "blank_index", json.dumps(len(changes["alphabet"])))
        return change

    four = _rewritten(onnx_file, tmp_path / "four.onnx", with_manifest(alphabet="0123"))
    with pytest.raises(CnnctcError, match=r"four.onnx: .*alphabet of 4 symbols and a blank\) needs \(batch, columns, "
                                          r"5\); it is not the model it claims to be"):
        Recognizer(four)
    tall = _rewritten(onnx_file, tmp_path / "tall.onnx", with_manifest(height=64))
    with pytest.raises(CnnctcError, match=r"tall.onnx: its input is tensor\(float\) \['batch', 3, 32, 100\], but its "
                                          r"metadata describes \(batch, 3, 64, 100\) float32 images"):
        Recognizer(tall)

    metadata = OnnxRunner(onnx_file).metadata

    def graph_file(name, node, input_type, output_shape):
        x = helper.make_tensor_value_info("images", input_type, ["batch", 3, 32, 100])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_shape)
        model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    identity = graph_file("identity.onnx", helper.make_node("Identity", ["images"], ["logits"]), TensorProto.FLOAT,
                          ["batch", 3, 32, 100])
    with pytest.raises(CnnctcError, match=r"identity.onnx: the model's output has shape \(1, 3, 32, 100\)"):
        Recognizer(identity)
    int64 = graph_file("int64.onnx", helper.make_node("Cast", ["images"], ["logits"], to=TensorProto.FLOAT),
                       TensorProto.INT64, ["batch", 3, 32, 100])
    with pytest.raises(CnnctcError, match=r"int64.onnx: its input is tensor\(int64\)"):
        Recognizer(int64)
    line = one_error_line(in_process_cli("predict", "--checkpoint", identity, next((root / "calib").glob("*.png"))))
    assert "it is not the model it claims to be" in line


def test_an_onnx_file_whose_metadata_contradicts_itself_is_refused_when_opened(models, tmp_path, in_process_cli):
    root, _, onnx_file, _ = models
    manifest = json.loads(OnnxRunner(onnx_file).metadata["cnnctc_manifest"])
    assert manifest["alphabet"] == DIGITS
    twelve = _rewritten(onnx_file, tmp_path / "twelve.onnx", lambda model, _: _set_meta(model, "num_class", "12"))
    with pytest.raises(CnnctcError, match=r"twelve.onnx: its metadata contradicts itself \(its num_class says 12 but "
                                          r"its manifest 11\); it is not the model it claims to be"):
        Recognizer(twelve)
    manifest["input_shape"] = [-1, 3, 64, 100]
    shape = _rewritten(onnx_file, tmp_path / "shape.onnx",
                       lambda model, _: _set_meta(model, "cnnctc_manifest", json.dumps(manifest)))
    with pytest.raises(CnnctcError, match=r"shape.onnx: input_shape \[-1, 3, 64, 100\] contradicts the "
                                          r"preprocessing, which makes 3 x 32 x 100 images"):
        Recognizer(shape)
    line = one_error_line(in_process_cli("predict", "--checkpoint", twelve, next((root / "calib").glob("*.png"))))
    assert "its metadata contradicts itself" in line and "export it again" in line


def test_a_mindir_whose_description_contradicts_it_is_refused_when_opened(models, tmp_path):
    _, _, _, mindir = models
    shutil.copyfile(mindir, tmp_path / "m.mindir")
    original = json.loads(sidecar_path(mindir).read_text())
    info = json.loads(json.dumps(original))
    info["alphabet"] = "0123"
    (tmp_path / "m.mindir.json").write_text(json.dumps(info))
    with pytest.raises(CnnctcError, match=r"m.mindir.json: it contradicts itself \(its alphabet says '0123' but its "
                                          r"manifest '0123456789'\); it does not describe m.mindir as exported"):
        MindIRRunner(tmp_path / "m.mindir")
    info["num_class"], info["blank_index"] = 5, 4
    info["cnnctc_manifest"]["alphabet"] = "0123"
    info["cnnctc_manifest"]["network"].pop("num_class", None)
    (tmp_path / "m.mindir.json").write_text(json.dumps(info))
    with pytest.raises(CnnctcError, match=r"m.mindir: .*needs \(batch, columns, 5\); it is not the model"):
        MindIRRunner(tmp_path / "m.mindir")
    info = json.loads(json.dumps(original))
    info["height"] = 64
    info["cnnctc_manifest"]["preprocess"]["height"] = 64
    info["cnnctc_manifest"]["input_shape"][2] = 64
    (tmp_path / "m.mindir.json").write_text(json.dumps(info))
    with pytest.raises(CnnctcError, match=r"m.mindir: does not take the \(batch, 3, 64, 100\) images m.mindir.json "
                                          "describes"):
        MindIRRunner(tmp_path / "m.mindir")


def test_mindspores_own_lines_for_a_damaged_mindir_stay_off_stderr_unless_debugging(models, tmp_path):
    root, _, _, mindir = models
    (tmp_path / "cut.mindir").write_bytes(mindir.read_bytes()[:200])
    shutil.copyfile(sidecar_path(mindir), tmp_path / "cut.mindir.json")
    image = next((root / "calib").glob("*.png"))
    line = one_error_line(cnnctc("predict", "--checkpoint", tmp_path / "cut.mindir", image))
    assert line.startswith(f"cnnctc: error: {tmp_path / 'cut.mindir'}: not a loadable MindIR file")
    run = cnnctc("predict", "--checkpoint", tmp_path / "cut.mindir", image, CNNCTC_DEBUG="1")
    assert run.returncode == 1 and "[ERROR]" in run.stderr   # asked for: MindSpore's own words


# --- a full disk -------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs, or a skip where this machine does not let the tests mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                              text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_export_and_quantize_onto_a_full_disk_name_the_file_and_say_so(models, small_disk, in_process_cli):
    root, ckpt, onnx_file, _ = models
    assert onnx_file.stat().st_size > 256 * 1024   # the file cannot fit
    out = small_disk / "m.onnx"
    with pytest.raises(CnnctcError) as error:
        export_model(out, checkpoint=ckpt)
    assert str(error.value).startswith(f"{out}: the disk is full")
    out = small_disk / "m.int8.onnx"
    line = one_error_line(in_process_cli("quantize", onnx_file, "--calib", root / "calib", "--out", out))
    assert line.startswith(f"cnnctc: error: {out}: the disk is full") and str(onnx_file) not in line
    assert list(small_disk.iterdir()) == []   # nothing half-written left behind


# --- the Python API takes what a user would pass ----------------------------------------------

def test_recognize_takes_one_image_as_well_as_a_list(models):
    from PIL import Image
    root, _, onnx_file, _ = models
    reader = Recognizer(onnx_file, batch_size=np.int64(4))
    assert reader.batch_size == 4 and type(reader.batch_size) is int
    path = sorted((root / "calib").glob("*.png"))[0]
    expected = reader.recognize([str(path)])
    assert len(expected) == 1
    for one in (str(path), path, path.read_bytes(), Image.open(path), np.asarray(Image.open(path).convert("RGB"))):
        assert [p.text for p in reader.recognize(one)] == [expected[0].text]
    with pytest.raises(TypeError, match="images must be an image"):
        reader.recognize(42)


def test_wrong_arguments_are_refused_by_name_before_any_model_loads(models):
    _, ckpt, onnx_file, _ = models
    for bad in (True, 0, 2.0, "4"):
        with pytest.raises(CnnctcError, match="batch_size must be a positive integer"):
            Recognizer(onnx_file, batch_size=bad)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) top_k \(decoder options go in "
                                        r"decoder_options"):
        Recognizer(onnx_file, top_k=3)
    with pytest.raises(TypeError, match="unexpected keyword argument.*colour"):
        Recognizer(ckpt, colour="red")
    with pytest.raises(TypeError, match="network options output_channel, but an exported .onnx file"):
        Recognizer(onnx_file, output_channel=64)
    with pytest.raises(TypeError, match="decoder_options must be a dict"):
        Recognizer(onnx_file, decoder_options=[1])
    reader = Recognizer(onnx_file, decoder="beam", decoder_options={"top_k": 3})   # the docstring's form
    assert len(reader.recognize(sorted((models[0] / "calib").glob("*.png"))[0], with_chars=True)[0].alternatives) >= 1
