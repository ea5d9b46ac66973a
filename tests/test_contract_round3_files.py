"""The error contract, round three: the user's files and a model file's own account of itself.

Three classes, each on real files and real `cnnctc` processes (no mocks):

- ``--overwrite`` replaces only what cnnctc wrote: hub-install's code directory (files of yours
  in it, or files changed since, are named and kept, with or without --overwrite), the description
  beside a MindIR, a run's older step checkpoints;
- a lineage that contradicts the file (its SHA-256, the registry's card of the model it names) is
  shown as a contradiction, its claims never printed as true;
- a lineage is data from a file: wrong types, 5000 levels of nesting or megabytes of text read as
  "damaged" in one line, the weights still read (predict under the default runtime, which exports
  to ONNX), and what is copied into an export stays small; another exporter's ONNX file reads as
  "lineage unknown".
"""
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env
from cnnctc.registry import BUNDLED_MODEL, DEFAULT_MODEL, get_model

HUB_UID = "mindspore/1.3/cnnctc_mjstiiit"


def tree_digest(*paths):
    """Names, kinds and contents of everything under ``paths`` (what must not change)."""
    found = {}
    for top in map(Path, paths):
        for path in [top, *sorted(top.rglob("*"))] if top.is_dir() else [top]:
            if not os.path.lexists(path):
                continue
            st = os.lstat(path)
            found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode)
                                else stat.S_IFMT(st.st_mode))
    return found


def cnnctc(*args, timeout=600, cwd=None):
    run = subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(), cwd=cwd,
                         capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in run.stderr and "unexpected" not in run.stderr, run.stderr
    return run


def error_line(run, status=1):
    """The one line a refused command prints: exit status, exactly one stderr line, no traceback."""
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnctc: error: "), run.stderr
    return lines[0]


def succeeded(run):
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", run.stderr   # -q: nothing on stderr but errors
    return run.stdout


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- 1. Files lost: --overwrite replaces only what cnnctc wrote ----------------------------------

def test_hub_install_never_loses_what_the_user_put_in_its_code_folder(tmp_path):
    from cnnctc.errors import CnnctcError
    from cnnctc.hub import hub_install
    hub = tmp_path / "hub"
    code = hub / "mindspore" / "1.3" / "cnnctc"
    succeeded(cnnctc("-q", "hub-install", "--hub-dir", hub, "--model", HUB_UID))
    assert (code / ".cnnctc-hub").is_file()
    (code / "cnnctc" / "my_experiments").mkdir()
    (code / "cnnctc" / "my_experiments" / "results.txt").write_text("three weeks of results\n")
    (code / "cnnctc" / "my_model.ckpt").write_bytes(os.urandom(4096))
    before = tree_digest(hub)
    for extra in ([], ["--overwrite"]):   # asked or not: never lost, and said so in one line
        line = error_line(cnnctc("-q", "hub-install", "--hub-dir", hub, "--model", HUB_UID, *extra))
        assert "2 files" in line and "cnnctc/my_experiments/results.txt" in line and "move them" in line, line
        assert tree_digest(hub) == before
    with pytest.raises(CnnctcError, match="2 files .*first: cnnctc/my_experiments/results.txt"):
        hub_install(hub, HUB_UID, overwrite=True)   # the Python API keeps the same contract
    assert tree_digest(hub) == before

    # A file hub-install wrote and the user changed since is theirs too.
    (code / "cnnctc" / "my_experiments" / "results.txt").unlink()
    (code / "cnnctc" / "my_experiments").rmdir()
    (code / "cnnctc" / "my_model.ckpt").unlink()
    with open(code / "cnnctc" / "alphabet.py", "a") as f:
        f.write("# my patch\n")
    before = tree_digest(hub)
    line = error_line(cnnctc("-q", "hub-install", "--hub-dir", hub, "--model", HUB_UID, "--overwrite"))
    assert "1 file " in line and "cnnctc/alphabet.py" in line, line
    assert tree_digest(hub) == before

    # What it wrote, unchanged, it replaces (Python's own __pycache__ files do not count).
    from cnnctc import alphabet as shipped
    (code / "cnnctc" / "alphabet.py").write_bytes(Path(shipped.__file__).read_bytes())
    (code / "cnnctc" / "__pycache__").mkdir()
    (code / "cnnctc" / "__pycache__" / "alphabet.cpython-311.pyc").write_bytes(b"compiled")
    succeeded(cnnctc("-q", "hub-install", "--hub-dir", hub, "--model", HUB_UID, "--overwrite"))
    assert not (code / "cnnctc" / "__pycache__").exists()
    succeeded(cnnctc("-q", "hub-install", "--hub-dir", hub, "--model", HUB_UID))

    # A folder it did not write: --overwrite replaces it only when it holds nothing to lose.
    theirs = hub / "mindspore" / "1.5" / "cnnctc"
    (theirs / ".git").mkdir(parents=True)
    (theirs / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
    (theirs / "src.py").write_text("the hub client's checkout\n")
    before = tree_digest(theirs)
    line = error_line(cnnctc("-q", "hub-install", "--hub-dir", hub, "--model", "mindspore/1.5/cnnctc_mjstiiit",
                             "--overwrite"))
    assert "not written by cnnctc hub-install" in line and "2 files" in line and ".git/HEAD" in line, line
    assert tree_digest(theirs) == before


def test_export_overwrite_never_replaces_a_description_it_did_not_write(tmp_path):
    out = tmp_path / "model.mindir"
    notes = tmp_path / "model.mindir.json"
    notes.write_text('{"my": "notes about the model"}\n')
    before = tree_digest(tmp_path)
    line = error_line(cnnctc("-q", "export", "--model", BUNDLED_MODEL, "--format", "mindir", "--out", out,
                             "--overwrite"))
    assert "model.mindir.json is not a description cnnctc export wrote" in line, line
    assert tree_digest(tmp_path) == before and not out.exists()
    # Its own description is replaced with the model.
    notes.unlink()
    succeeded(cnnctc("-q", "export", "--model", BUNDLED_MODEL, "--format", "mindir", "--out", out))
    succeeded(cnnctc("-q", "export", "--model", BUNDLED_MODEL, "--format", "mindir", "--out", out, "--overwrite"))
    assert "cnnctc_manifest" in json.loads(notes.read_text())


def test_a_run_removes_only_its_own_older_checkpoints(tmp_path):
    import mindspore as ms
    from cnnctc.training.store import CheckpointStore
    cell = ms.nn.Dense(2, 2)
    theirs = tmp_path / "cnnctc-0000000.ckpt"   # put there by the user while the run goes on
    store = CheckpointStore(tmp_path, keep=1)
    store.save_step(cell, 1, {})
    theirs.write_bytes(b"a checkpoint of mine")
    store.save_step(cell, 2, {})
    store.save_step(cell, 3, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnnctc-0000000.ckpt", "cnnctc-0000003.ckpt"]
    assert theirs.read_bytes() == b"a checkpoint of mine"


# --- model files whose lineage lies or is damaged -----------------------------------------------

@pytest.fixture(scope="module")
def lineages(tmp_path_factory):
    """The bundled model's weights saved again, each with another lineage entry: (folder, paths)."""
    import mindspore as ms
    folder = tmp_path_factory.mktemp("lineages")
    state = ms.load_checkpoint(str(get_model(BUNDLED_MODEL).bundled))
    weights = [{"name": k, "data": v} for k, v in state.items() if not isinstance(v, str)]
    meta = {k: v for k, v in state.items() if isinstance(v, str)}
    hub = get_model(DEFAULT_MODEL).manifest
    hub_claims = {"uid": hub.uid, "file_name": hub.file_name, "sha256": hub.sha256, "url": hub.url,
                  "accuracy": hub.accuracy, "train_dataset": hub.train_dataset}
    depth = 5000
    entries = {
        # Claims to be the hub's asset: its hash, its card's accuracy.
        "claims": json.dumps({"origin": "model", **hub_claims}),
        # Fine-tuned from the hub model, whose accuracy it inflates.
        "parent": json.dumps({"origin": "finetune", "written_by": "cnnctc 0.1.0",
                              "started_from": {"kind": "model", **hub_claims, "accuracy": 99.9}}),
        "types": json.dumps({"origin": "finetune", "started_from": "str"}),
        "deep": ('{"origin": "finetune", "started_from": {"kind": "checkpoint", "lineage": ' * depth
                 + '{"origin": "unknown"}' + "}}" * depth),
        "big": json.dumps({"origin": "finetune", "written_by": "x" * 3_000_000}),
    }
    paths = {}
    for name, text in entries.items():
        paths[name] = folder / f"{name}.ckpt"
        ms.save_checkpoint(weights, str(paths[name]), append_dict={**meta, "cnnctc_lineage": text})
    image = folder / "word.png"
    from PIL import Image, ImageDraw
    picture = Image.new("RGB", (100, 32), "white")
    ImageDraw.Draw(picture).text((8, 10), "hello", fill="black")
    picture.save(image)
    return folder, paths, image


def info_lines(path, *args):
    run = cnnctc("-q", "info", "--checkpoint", path, *args)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    return run.stdout


# --- 2. A lineage that contradicts the file is shown as such -------------------------------------

def test_a_lineage_contradicting_the_file_is_never_shown_as_true(lineages, tmp_path):
    folder, paths, image = lineages
    claims = paths["claims"]
    own = sha256(claims)
    text = info_lines(claims)
    assert "contradicted" in text and own[:12] in text, text
    assert "lineage: the asset of model" not in text and "85.97%" not in text, text
    lineage = json.loads(info_lines(claims, "--json"))["lineage"]
    assert lineage["origin"] == "unknown" and own[:12] in lineage["contradiction"], lineage
    assert "accuracy" not in lineage and "sha256" not in lineage
    # A parent the registry knows, given another accuracy than its card's.
    text = info_lines(paths["parent"])
    assert "contradicted" in text and "99.9" in text and "85.97%" in text, text
    assert "started from: model" not in text
    # The Python API says the same.
    from cnnctc.model_info import read_model_lineage
    kind, lineage, _ = read_model_lineage(claims)
    assert kind == "ckpt" and "contradiction" in lineage and "accuracy" not in lineage
    # The weights still read (the default runtime exports them to ONNX), and the export does not
    # take over the claims either.
    before = tree_digest(folder)
    assert succeeded(cnnctc("-q", "predict", "--checkpoint", claims, image)).startswith(f"{image}: ")
    onnx = tmp_path / "claims.onnx"
    succeeded(cnnctc("-q", "export", "--checkpoint", claims, "--format", "onnx", "--out", onnx))
    text = info_lines(onnx)
    assert "contradicted" in text and "85.97%" not in text and "lineage: the asset of model" not in text, text
    assert tree_digest(folder) == before


# --- 3. A lineage is data from a file: damaged reads as damaged, the weights still load ----------

def test_a_damaged_lineage_is_one_line_and_never_stops_the_weights(lineages, tmp_path):
    folder, paths, image = lineages
    before = tree_digest(folder)
    expected = succeeded(cnnctc("-q", "predict", "--model", BUNDLED_MODEL, image)).split(": ", 1)[1]
    for name, why in (("types", "started_from is a string, not an object"), ("deep", "nested deeper than"),
                      ("big", "MiB long")):
        text = info_lines(paths[name])
        damaged = [line for line in text.splitlines() if "damaged" in line]
        assert len(damaged) == 1 and why in damaged[0] and "weights still load" in damaged[0], text
        assert json.loads(info_lines(paths[name], "--json"))["lineage"]["origin"] == "unknown"
        # predict under the default runtime: exported to ONNX with the lineage, then read.
        out = succeeded(cnnctc("-q", "predict", "--checkpoint", paths[name], image))
        assert out.split(": ", 1)[1] == expected, out
    # What the export copied is the verdict, not the megabytes: its ONNX is the model's size.
    cache = Path(os.environ["CNNCTC_CACHE_DIR"])
    exports = {p.name.split(".")[0]: p for p in cache.rglob("*.onnx")}
    big = exports[sha256(paths["big"])]
    assert big.stat().st_size < exports[sha256(paths["types"])].stat().st_size + 64_000
    assert "damaged" in info_lines(big)
    assert tree_digest(folder) == before

    # A MindIR whose description holds a lineage nested 5000 deep: damaged, the model still reads.
    mindir = tmp_path / "m.mindir"
    succeeded(cnnctc("-q", "export", "--model", BUNDLED_MODEL, "--format", "mindir", "--out", mindir))
    side = tmp_path / "m.mindir.json"
    description = json.loads(side.read_text())
    text = json.dumps(description).replace('"cnnctc_lineage": ', '"cnnctc_lineage": ' + '{"a": ' * 5000 + "1"
                                           + "}" * 5000 + ', "earlier_lineage": ')
    side.write_text(text)
    assert "damaged" in info_lines(mindir)
    assert succeeded(cnnctc("-q", "predict", "--checkpoint", mindir, image)).split(": ", 1)[1] == expected


def test_another_exporters_onnx_reads_as_lineage_unknown(lineages, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 100])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 100])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [image], [out])
    model = helper.make_model(graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "theirs.onnx"
    onnx.save(model, str(path))
    text = info_lines(path)
    assert "lineage: unknown" in text and "no cnnctc metadata" in text and "pytorch" in text, text
    report = json.loads(info_lines(path, "--json"))
    assert report["lineage"]["origin"] == "unknown" and report["manifest"] is None
    # Reading it is still refused in one line: there is no alphabet or preprocessing to read it with.
    line = error_line(cnnctc("-q", "predict", "--checkpoint", path, lineages[2]))
    assert "without cnnctc metadata" in line
