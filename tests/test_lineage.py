"""A model's description says where it really came from (issue 15 section 2).

A narrow network trained from random weights, one fine-tuned from its checkpoint, and their ONNX
and MindIR exports (real MindSpore, onnxruntime, LMDBs), each read back with ``cnnctc info
--checkpoint``. None of them may carry the hub model's uid, URL, hash, accuracy or training set
as its own; a checkpoint written before lineage was kept reads "unknown".
"""
import hashlib
import json
from pathlib import Path

import pytest

import mindspore  # noqa: F401  (MindSpore before onnx in this process, SPEC section 9)

from cnnctc.checkpoint import read_checkpoint, save_checkpoint
from cnnctc.cli import main
from cnnctc.data import write_lmdb
from cnnctc.export import export_metadata, export_model, sidecar_path
from cnnctc.lineage import LINEAGE_KEY, cnnctc_version
from cnnctc.network import CNNCTC
from cnnctc.recognizer import Recognizer
from cnnctc.registry import get_model
from cnnctc.render import find_fonts, random_words, render_word
from cnnctc.training import TrainConfig, finetune

DIGITS = "0123456789"
WIDTH = 16  # tiny: the point is where the model came from, not what it reads
HUB = get_model("mindspore/1.3/cnnctc_mjstiiit").manifest
HUB_CLAIMS = (HUB.uid, HUB.sha256, HUB.url, "85.97", "mjstiiit")


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def png(word, rng_seed):
    import io
    import random
    buffer = io.BytesIO()
    render_word(word, font=(find_fonts() or [None])[0], rng=random.Random(rng_seed)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run from random weights, a run fine-tuned from its best.ckpt, and their exports."""
    import random
    root = tmp_path_factory.mktemp("lineage")
    words = random_words(48, DIGITS, min_length=2, max_length=6, rng=random.Random(1))
    # 48 usable samples and 3 that the alphabet and length filter skip: "kept" must say so.
    write_lmdb(root / "train.lmdb", [(png(w, i), w) for i, w in enumerate(words)] +
               [(png("12", 100), "ab12"), (png("34", 101), "3x4"), (png("5", 102), "5" * 14)])
    write_lmdb(root / "valid.lmdb", [(png(w, 200 + i), w) for i, w in
                                     enumerate(random_words(8, DIGITS, min_length=2, max_length=6,
                                                            rng=random.Random(2)))])
    small = dict(batch_size=4, output_channel=WIDTH, log_every=1000)
    scratch = finetune(root / "train.lmdb", root / "valid.lmdb", root / "scratch", pretrained=None,
                       config=TrainConfig(alphabet=DIGITS, steps=4, save_every=2, lr=1e-3, **small))
    parent = str(root / "scratch" / "best.ckpt")   # the path as the user gives it
    tuned = finetune(f"{root}/./train.lmdb", str(root / "valid.lmdb"), root / "tuned", pretrained=parent,
                     config=TrainConfig(steps=2, save_every=100, seed=7, **small))
    exports = {}
    for name, result in (("scratch", scratch), ("tuned", tuned)):
        exports[name, "onnx"] = export_model(root / f"{name}.onnx", checkpoint=result.best_checkpoint)
        exports[name, "mindir"] = export_model(root / f"{name}.mindir", format="mindir",
                                               checkpoint=result.best_checkpoint)
    return root, scratch, tuned, parent, exports


def info(capsys, *args):
    capsys.readouterr()
    code = main(["info", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def info_json(capsys, path):
    return json.loads(info(capsys, "--checkpoint", path, "--json"))


def assert_no_hub_claims(text):
    for claim in HUB_CLAIMS:
        assert claim not in text, f"{claim!r} in {text[:3000]}"


def test_a_model_trained_from_random_weights_says_so(runs, capsys):
    root, scratch, _, _, _ = runs
    report = info_json(capsys, scratch.best_checkpoint)
    assert report["kind"] == "ckpt"
    lineage = report["lineage"]
    assert lineage["origin"] == "finetune" and lineage["written_by"] == f"cnnctc {cnnctc_version()}"
    assert lineage["started_from"] == {"kind": "none"}
    trained = lineage["trained_on"]
    assert trained["datasets"] == [{"path": str(root / "train.lmdb"), "num_samples": 51, "kept": 48}]
    assert sum(trained["skipped"].values()) == 3
    assert (trained["alphabet"], trained["batch_size"], trained["seed"], trained["workers"]) == (DIGITS, 4, 1, 1)
    assert trained["planned_steps"] == 4 and trained["recipe"]["lr"] == 1e-3
    assert trained["recipe"]["output_channel"] == WIDTH and trained["recipe"]["warmup_steps"] == 1
    measured = lineage["measured"]
    best = max(scratch.history, key=lambda h: h["accuracy"])
    assert trained["steps"] == measured["best_step"] == best["step"]
    assert measured["accuracy"] == measured["best_accuracy"] == scratch.best_accuracy
    assert measured["protocol"] == "zoo" and measured["max_length"] == 13
    assert measured["datasets"] == [{"path": str(root / "valid.lmdb"), "kept": 8, "skipped": 0}]
    # The manifest that reads this very file: its own hash and name, no card's claims.
    manifest = report["manifest"]
    assert manifest["sha256"] == sha256(scratch.best_checkpoint) and manifest["file_name"] == "best.ckpt"
    assert manifest["alphabet"] == DIGITS and manifest["network"]["output_channel"] == WIDTH
    assert "accuracy" not in manifest and manifest["train_dataset"] == ""
    assert_no_hub_claims(json.dumps(report))

    text = info(capsys, "--checkpoint", scratch.best_checkpoint)
    assert "started from: random weights" in text
    assert f"{root / 'train.lmdb'} (48 of 51 samples kept)" in text
    assert f"best {scratch.best_accuracy:.2f}% at step {best['step']}" in text
    assert_no_hub_claims(text)


def test_every_checkpoint_of_a_run_carries_its_own_step(runs):
    _, scratch, _, _, _ = runs
    periodic = json.loads(read_checkpoint(scratch.out_dir / "cnnctc-0000004.ckpt")[LINEAGE_KEY])
    assert periodic["trained_on"]["steps"] == 4 and periodic["started_from"] == {"kind": "none"}
    # Validated after step 4 and saved after it: the accuracy is of these very weights.
    assert periodic["measured"]["accuracy"] == scratch.history[-1]["accuracy"]
    assert periodic["measured"]["best_accuracy"] == scratch.best_accuracy


def test_a_fine_tuned_model_names_its_parent_and_keeps_the_parents_claims_under_it(runs, capsys):
    root, scratch, tuned, parent, _ = runs
    lineage = info_json(capsys, tuned.last_checkpoint)["lineage"]
    start = lineage["started_from"]
    assert start["kind"] == "checkpoint" and start["path"] == parent
    assert start["sha256"] == sha256(parent)
    assert start["lineage"] == json.loads(read_checkpoint(parent)[LINEAGE_KEY])  # the parent's, kept under it
    assert start["lineage"]["started_from"] == {"kind": "none"}
    trained = lineage["trained_on"]
    assert trained["datasets"] == [{"path": f"{root}/./train.lmdb", "num_samples": 51, "kept": 48}]  # as given
    assert trained["seed"] == 7 and trained["steps"] == trained["planned_steps"] == 2
    assert trained["alphabet"] == DIGITS   # taken from the parent's checkpoint
    assert lineage["measured"]["best_accuracy"] == tuned.best_accuracy   # its own, not the parent's
    text = info(capsys, "--checkpoint", tuned.last_checkpoint)
    assert f"started from: checkpoint {parent} (sha256 {sha256(parent)})" in text
    assert "started from: random weights" in text   # the parent's own start, indented below it


@pytest.mark.parametrize("name", ["scratch", "tuned"])
@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_an_export_keeps_its_checkpoints_lineage(runs, capsys, name, fmt):
    _, scratch, tuned, _, exports = runs
    checkpoint = (scratch if name == "scratch" else tuned).best_checkpoint
    report = info_json(capsys, exports[name, fmt])
    assert report["kind"] == fmt
    lineage = dict(report["lineage"])
    exported = lineage.pop("exported")
    assert exported == {"format": fmt, "by": f"cnnctc {cnnctc_version()}", "checkpoint": "best.ckpt",
                        "checkpoint_sha256": sha256(checkpoint)}
    assert lineage == json.loads(read_checkpoint(checkpoint)[LINEAGE_KEY])
    manifest = report["manifest"]
    assert manifest["sha256"] == sha256(checkpoint) and manifest["uid"] == f"local/{sha256(checkpoint)[:16]}"
    assert "accuracy" not in manifest and manifest["train_dataset"] == ""
    assert_no_hub_claims(json.dumps(report))
    text = info(capsys, "--checkpoint", exports[name, fmt])
    assert f"exported:     {fmt} by cnnctc {cnnctc_version()} from best.ckpt" in text
    assert_no_hub_claims(text)


def test_onnx_metadata_values_are_json_and_the_producer_is_cnnctc(runs):
    import onnx
    _, scratch, _, _, exports = runs
    model = onnx.load(str(exports["scratch", "onnx"]))
    assert (model.producer_name, model.producer_version) == ("cnnctc", cnnctc_version())
    values = {p.key: json.loads(p.value) for p in model.metadata_props}   # every value parses
    assert values["alphabet"] == DIGITS and values["blank_index"] == 10 and values["source_sha256"] == \
        sha256(scratch.best_checkpoint)
    assert values["source_uid"] == f"local/{sha256(scratch.best_checkpoint)[:16]}"
    assert_no_hub_claims(model.doc_string + json.dumps(values))
    side = json.loads(sidecar_path(exports["scratch", "mindir"]).read_text())
    assert side["source_uid"] == values["source_uid"] and side[LINEAGE_KEY]["exported"]["format"] == "mindir"
    # Both still read as models with the checkpoint's alphabet.
    for fmt in ("onnx", "mindir"):
        assert Recognizer(exports["scratch", fmt]).alphabet == DIGITS


def test_an_onnx_file_exported_before_values_were_json_still_reads(runs, tmp_path, capsys):
    import onnx
    from cnnctc.onnx_runtime import OnnxRunner, metadata_values
    _, _, _, _, exports = runs
    model = onnx.load(str(exports["scratch", "onnx"]))
    old = {p.key: json.loads(p.value) for p in model.metadata_props if p.key != LINEAGE_KEY}
    del model.metadata_props[:]
    for key, value in old.items():   # the old writer: strings bare, everything else as JSON
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(tmp_path / "old.onnx"))
    runner = OnnxRunner(tmp_path / "old.onnx")
    assert runner.metadata["alphabet"] == DIGITS    # bare, and made of digits: must not read as a number
    assert metadata_values(runner.metadata)["alphabet"] == DIGITS
    assert runner.manifest.alphabet == DIGITS
    assert info_json(capsys, tmp_path / "old.onnx")["lineage"] == {"origin": "unknown"}


def test_a_checkpoint_written_before_lineage_loads_and_reads_unknown(runs, tmp_path, capsys):
    old = save_checkpoint(CNNCTC(num_class=len(DIGITS) + 1, output_channel=WIDTH), tmp_path / "old.ckpt",
                          metadata={"alphabet": DIGITS})
    assert Recognizer(old).alphabet == DIGITS
    report = info_json(capsys, old)
    assert report["lineage"] == {"origin": "unknown"}
    assert "lineage: unknown" in info(capsys, "--checkpoint", old)
    exported = export_model(tmp_path / "old.onnx", checkpoint=old)
    report = info_json(capsys, exported)
    assert report["lineage"]["origin"] == "unknown" and report["lineage"]["exported"]["checkpoint"] == "old.ckpt"
    assert_no_hub_claims(json.dumps(report))


def test_only_the_registered_asset_itself_carries_its_cards_claims():
    own = export_metadata(HUB, fmt="onnx", batch_size=None, source_sha256=HUB.sha256, source_name=HUB.file_name)
    assert own["source_uid"] == HUB.uid and own["cnnctc_manifest"]["accuracy"] == 85.97
    assert own[LINEAGE_KEY]["origin"] == "model" and own[LINEAGE_KEY]["train_dataset"] == "mjstiiit"
    other = export_metadata(HUB, fmt="onnx", batch_size=None, source_sha256="ab" * 32, source_name="mine.ckpt")
    assert other[LINEAGE_KEY] == {"origin": "unknown", "exported": other[LINEAGE_KEY]["exported"]}
    assert_no_hub_claims(json.dumps(other))


def test_a_user_manifest_made_with_info_json_names_the_users_file(runs, tmp_path, capsys):
    """``info --checkpoint FILE --json``'s manifest serves a fine-tuned file; exported with it, the file
    still carries no hub claim, and a manifest copied from the hub's (``info --json``) loses its card's
    accuracy and training set on a fine-tuned file."""
    _, _, tuned, _, _ = runs
    manifest = info_json(capsys, tuned.best_checkpoint)["manifest"]
    (tmp_path / "mine.json").write_text(json.dumps(manifest))
    assert Recognizer(tuned.best_checkpoint, manifest=tmp_path / "mine.json").alphabet == DIGITS
    out = export_model(tmp_path / "mine.onnx", checkpoint=tuned.best_checkpoint, manifest=tmp_path / "mine.json")
    assert info_json(capsys, out)["manifest"]["uid"] == manifest["uid"]

    copied = json.loads(info(capsys, "--json"))     # the hub's manifest, edited to name the user's file
    copied.update(uid="me/1.0/digits", sha256=sha256(tuned.best_checkpoint), file_name="best.ckpt",
                  alphabet=DIGITS, network={"output_channel": WIDTH})
    (tmp_path / "copied.json").write_text(json.dumps(copied))
    out = export_model(tmp_path / "copied.onnx", checkpoint=tuned.best_checkpoint, manifest=tmp_path / "copied.json")
    report = info_json(capsys, out)
    assert report["manifest"]["uid"] == "me/1.0/digits" and "accuracy" not in report["manifest"]
    assert report["manifest"]["train_dataset"] == "" and report["lineage"]["origin"] == "finetune"


def test_a_run_from_a_models_asset_keeps_that_models_claims_under_the_parent(runs, narrow_checkpoint, serve,
                                                                             tmp_path, capsys, monkeypatch):
    """``--pretrained hub`` with a manifest whose asset is served on 127.0.0.1: the run names that uid
    and the file's SHA-256, the manifest's accuracy and training set stay under ``started_from``, and the
    fine-tuned file's export claims none of them."""
    from conftest import NARROW, write_manifest
    root = runs[0]
    weights = Path(narrow_checkpoint[0]).read_bytes()
    server = serve(weights)
    manifest = write_manifest(tmp_path / "hub-like.json", url=server.url, sha256=sha256(narrow_checkpoint[0]),
                              network={"output_channel": NARROW})
    monkeypatch.setenv("CNNCTC_ALLOW_HTTP", "1")
    result = finetune(root / "train.lmdb", None, tmp_path / "run", pretrained="hub", manifest=manifest,
                      config=TrainConfig(alphabet=DIGITS, steps=2, batch_size=4, output_channel=NARROW,
                                         log_every=1000))
    lineage = info_json(capsys, result.last_checkpoint)["lineage"]
    assert lineage["started_from"] == {"kind": "model", "uid": HUB.uid, "file_name": HUB.file_name,
                                       "sha256": sha256(narrow_checkpoint[0]), "url": server.url,
                                       "accuracy": 85.97, "train_dataset": "mjstiiit"}
    assert lineage["measured"] is None   # no --valid: nothing measured, and no parent's number instead
    exported = export_model(tmp_path / "run.onnx", checkpoint=result.last_checkpoint)
    report = info_json(capsys, exported)
    assert report["lineage"]["started_from"] == lineage["started_from"]
    top = {k: v for k, v in report.items() if k != "lineage"}
    assert "85.97" not in json.dumps(top) and "mjstiiit" not in json.dumps(top)
    assert "accuracy" not in report["manifest"] and report["manifest"]["uid"] != HUB.uid
    text = info(capsys, "--checkpoint", exported)
    assert f"started from: model {HUB.uid} (sha256 {sha256(narrow_checkpoint[0])}; its accuracy 85.97%" in text
