"""Where a model came from: the lineage every checkpoint ``finetune`` writes and every export carries.

A lineage is a JSON object whose ``origin`` says what kind of file it describes:

- ``"finetune"``: trained by ``cnnctc finetune``. ``started_from`` is the model whose asset it
  started from (hub uid or a user's manifest: uid, SHA-256 and that model's claims), the local checkpoint (its path as given, SHA-256 and its own
  lineage) or ``{"kind": "none"}``; ``trained_on`` the datasets (path as given, ``num-samples``,
  what was kept), alphabet, steps, batch size, recipe and seed; ``measured`` the validation
  accuracy of these weights and the run's best, with the protocol and datasets.
- ``"model"``: a model's asset itself (a registered uid's, or a user manifest's), whose
  manifest's accuracy and training set are its own.
- ``"unknown"``: a file written before cnnctc recorded lineage, or by another tool.

An export keeps its checkpoint's lineage and adds ``exported`` (format, tool, the checkpoint's
file name and SHA-256). A parent's accuracy, training set, URL and hash only ever appear under
the parent. No MindSpore import here (``info`` on an ``.onnx`` file must not pay for it).
"""
import importlib.metadata
import json
import re
from pathlib import Path

__all__ = ["LINEAGE_KEY", "UNKNOWN", "cnnctc_version", "parse_lineage", "model_lineage", "file_lineage",
           "started_from_none", "started_from_model", "started_from_checkpoint", "export_lineage",
           "own_manifest", "checkpoint_manifest", "read_model_lineage", "describe_lineage"]

LINEAGE_KEY = "cnnctc_lineage"     # checkpoint entry and ONNX/sidecar metadata key, a JSON object
UNKNOWN = {"origin": "unknown"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def cnnctc_version():
    """This package's version (the installed distribution's, else the source tree's)."""
    try:
        return importlib.metadata.version("cnnctc")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__
        return __version__


def parse_lineage(text):
    """The lineage object in ``text`` (JSON), or UNKNOWN when there is none or it is unreadable."""
    if isinstance(text, dict):
        return text if isinstance(text.get("origin"), str) else dict(UNKNOWN)
    if not isinstance(text, str):
        return dict(UNKNOWN)
    try:
        value = json.loads(text)
    except ValueError:
        return dict(UNKNOWN)
    return value if isinstance(value, dict) and isinstance(value.get("origin"), str) else dict(UNKNOWN)


def model_lineage(manifest):
    """The lineage of a manifest's own asset: the manifest's claims are that file's own."""
    data = {"origin": "model", "uid": manifest.uid, "file_name": manifest.file_name, "sha256": manifest.sha256,
            "url": manifest.url}
    if manifest.accuracy is not None:
        data["accuracy"] = manifest.accuracy
    if manifest.train_dataset:
        data["train_dataset"] = manifest.train_dataset
    return data


def _registered_with_sha256(sha256):
    from .registry import list_models
    return next((entry.manifest for entry in list_models() if entry.manifest.sha256 == sha256), None)


def file_lineage(saved, sha256):
    """The lineage of a checkpoint: its saved one, else the registry's when its hash is a registered
    asset's, else UNKNOWN. ``saved`` is the checkpoint's lineage entry (or None)."""
    lineage = parse_lineage(saved)
    if lineage["origin"] != "unknown":
        return lineage
    registered = _registered_with_sha256(sha256) if sha256 else None
    return model_lineage(registered) if registered is not None else lineage


def started_from_none():
    return {"kind": "none"}


def started_from_model(manifest):
    """A run started from a model's asset (a hub uid or a user's manifest), fetched and verified, so
    its hash is the manifest's; that model's claims are kept here, under the parent."""
    return {"kind": "model", **{k: v for k, v in model_lineage(manifest).items() if k != "origin"}}


def started_from_checkpoint(path, sha256, saved_lineage):
    """A run started from a local checkpoint: the path as given, its SHA-256 and its own lineage."""
    return {"kind": "checkpoint", "path": str(path), "sha256": sha256, "lineage": file_lineage(saved_lineage, sha256)}


def export_lineage(checkpoint_lineage, *, fmt, file_name, sha256):
    """An exported file's lineage: its checkpoint's, and what exported it from which file."""
    lineage = dict(checkpoint_lineage)
    lineage["exported"] = {"format": fmt, "by": f"cnnctc {cnnctc_version()}", "checkpoint": file_name,
                           "checkpoint_sha256": sha256}
    return lineage


def own_manifest(manifest, *, file_name, sha256):
    """``manifest`` describing another checkpoint read the same way: its own file name, hash and a
    local uid; no card's accuracy or training set (those belong to the manifest's asset)."""
    name = _UNSAFE.sub("_", file_name).lstrip("._-") or "checkpoint.ckpt"
    return manifest.replace(uid=f"local/{sha256[:16]}", file_name=name, url=f"file:{name}", sha256=sha256,
                            accuracy=None, train_dataset="", repo_link="", mindspore_version="", extra={})


def checkpoint_manifest(base, state, *, file_name, sha256):
    """The manifest that reads a checkpoint: ``base`` fitted to its saved alphabet and head width;
    ``base`` itself only when the file is ``base``'s asset (same SHA-256), else :func:`own_manifest`."""
    if sha256 == base.sha256:
        return base
    alphabet = state.get("alphabet")
    manifest = base.replace(alphabet=alphabet) if isinstance(alphabet, str) else base
    head = state.get("Prediction.weight")
    if head is not None and len(head.shape) == 2:
        manifest = manifest.replace(network={**manifest.network, "output_channel": int(head.shape[1])})
    return own_manifest(manifest, file_name=file_name, sha256=sha256)


def read_model_lineage(path, base=None):
    """(kind, lineage, manifest dict) of a ``.ckpt``, ``.onnx`` or ``.mindir``/``.air`` file.

    The manifest is the one that reads that very file (an export's own; for a checkpoint,
    ``base`` — the registry's default if None — fitted to it). MindSpore is imported for a
    ``.ckpt`` only.
    """
    from .errors import CnnctcError
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .onnx_runtime import MANIFEST_KEY, OnnxRunner, metadata_values
        values = metadata_values(OnnxRunner(path).metadata)
        return "onnx", parse_lineage(values.get(LINEAGE_KEY)), values.get(MANIFEST_KEY)
    if suffix in (".mindir", ".air"):
        if not path.is_file():
            raise CnnctcError(f"{path}: no such {suffix[1:].upper()} file")
        from .export import MANIFEST_KEY, read_sidecar
        _, info = read_sidecar(path)
        return suffix[1:], parse_lineage(info.get(LINEAGE_KEY)), info.get(MANIFEST_KEY)
    from .checkpoint import read_checkpoint
    from .download import sha256_file
    from .registry import get_model
    state = read_checkpoint(path, weights_only=True)
    sha256 = sha256_file(path)
    manifest = checkpoint_manifest(base or get_model().manifest, state, file_name=path.name, sha256=sha256)
    return "ckpt", file_lineage(state.get(LINEAGE_KEY), sha256), manifest.to_dict()


def _accuracy(value):
    return "-" if value is None else f"{value:.2f}%"


def _origin_lines(lineage, indent):
    pad = " " * indent
    origin = lineage.get("origin")
    if origin == "model":
        claims = f"; accuracy {lineage['accuracy']}%" if lineage.get("accuracy") is not None else ""
        claims += f", trained on {lineage['train_dataset']}" if lineage.get("train_dataset") else ""
        return [f"{pad}the asset of model {lineage.get('uid')} (sha256 {lineage.get('sha256')}{claims})"]
    if origin != "finetune":
        return [f"{pad}unknown (no lineage recorded: written before cnnctc kept one, or by another tool)"]
    lines = []
    start = lineage.get("started_from") or {}
    kind = start.get("kind")
    if kind == "model":
        claims = f"; its accuracy {start['accuracy']}%" if start.get("accuracy") is not None else ""
        claims += f", trained on {start['train_dataset']}" if start.get("train_dataset") else ""
        lines.append(f"{pad}started from: model {start.get('uid')} (sha256 {start.get('sha256')}{claims})")
    elif kind == "checkpoint":
        lines.append(f"{pad}started from: checkpoint {start.get('path')} (sha256 {start.get('sha256')}), whose "
                     "lineage is:")
        lines += _origin_lines(start.get("lineage") or UNKNOWN, indent + 4)
    elif kind == "none":
        lines.append(f"{pad}started from: random weights")
    else:
        lines.append(f"{pad}started from: unknown")
    trained = lineage.get("trained_on") or {}
    for data in trained.get("datasets", []):
        lines.append(f"{pad}trained on:   {data.get('path')} ({data.get('kept')} of {data.get('num_samples')} "
                     "samples kept)")
    recipe = trained.get("recipe") or {}
    lines.append(f"{pad}training:     step {trained.get('steps')} of {trained.get('planned_steps')}, batch "
                 f"{trained.get('batch_size')} x {trained.get('workers', 1)} workers, lr {recipe.get('lr')}, "
                 f"width {recipe.get('output_channel')}, seed {trained.get('seed')}, alphabet "
                 f"{trained.get('alphabet')!r}")
    measured = lineage.get("measured")
    if not measured:
        lines.append(f"{pad}measured:     nothing (no --valid)")
    else:
        names = ", ".join(f"{d.get('path')} ({d.get('kept')} kept)" for d in measured.get("datasets", []))
        lines.append(f"{pad}measured:     {_accuracy(measured.get('accuracy'))} at this step, best "
                     f"{_accuracy(measured.get('best_accuracy'))} at step {measured.get('best_step')} "
                     f"({measured.get('protocol')} protocol on {names})")
    return lines


def describe_lineage(path, kind, lineage):
    """The lines ``cnnctc info --checkpoint`` prints for a file's lineage."""
    lines = [f"file:         {path} ({kind})"]
    exported = lineage.get("exported")
    if exported:
        lines.append(f"exported:     {exported.get('format')} by {exported.get('by')} from "
                     f"{exported.get('checkpoint')} (sha256 {exported.get('checkpoint_sha256')})")
    if lineage.get("origin") == "finetune":
        lines.append(f"written by:   {lineage.get('written_by')}")
    lines.append("lineage:" + ("" if lineage.get("origin") == "finetune" else
                              " " + _origin_lines(lineage, 0)[0].strip()))
    if lineage.get("origin") == "finetune":
        lines += _origin_lines(lineage, 2)
    return lines
