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
This module is data and checks, below every reader and writer of model files (checkpoint, export,
the runners); :mod:`cnnctc.model_info` reads a file's lineage for ``info`` and prints it.

A lineage is data read from a file, so it is read defensively: one longer than ``MAX_CHARS`` or
nested deeper than ``MAX_DEPTH`` is not read, one of the wrong types is not used, and either
reads as ``{"origin": "unknown", "damaged": why}``; a lineage whose claims contradict what can be
checked (the file's own SHA-256, the alphabet it holds, its network's width from its Prediction.weight,
an export's source checkpoint hash, the registry's card of a model it names) reads as ``{"origin":
"unknown", "contradiction": why}`` and its claims are dropped. Neither ever stops the weights
from being read. A value of the file that a message quotes is quoted as data (:func:`short`:
control characters escaped, cut short). What is copied into a new checkpoint or an export is cut
to well under both limits (the oldest ancestors go first), so every file cnnctc writes reads back whole.
"""
import copy
import importlib.metadata
import json
import math
import re

# Where a file keeps its lineage, and how much of one is read, is part of reading the file.
from .model_files import LINEAGE_KEY, MAX_CHARS, MAX_DEPTH, loads_with_lineage, state_facts

__all__ = ["LINEAGE_KEY", "UNKNOWN", "MAX_CHARS", "MAX_DEPTH", "cnnctc_version", "parse_lineage", "model_lineage",
           "file_lineage", "checked_lineage", "started_from_none", "started_from_model", "started_from_checkpoint",
           "export_lineage", "own_manifest", "checkpoint_manifest", "loads_with_lineage", "state_facts", "MAX_COUNT",
           "escaped", "short", "is_finite", "number_phrase", "kind_of", "shown_alphabet"]

UNKNOWN = {"origin": "unknown"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# What is copied into a new checkpoint (a parent's lineage) or an export: cut to this, so that what
# cnnctc writes is always read back whole.
_COPY_CHARS = MAX_CHARS // 2
_COPY_DEPTH = MAX_DEPTH - 10
_ORIGINS = ("finetune", "model", "unknown")
# A count (samples, steps, a batch) above this, or below zero, is shown as damaged, never as a count.
MAX_COUNT = 10 ** 15


def cnnctc_version():
    """This package's version (the installed distribution's, else the source tree's)."""
    try:
        return importlib.metadata.version("cnnctc")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__
        return __version__


def _damaged(why):
    return {"origin": "unknown", "damaged": why}


def escaped(text):
    """``text`` with every character that is not printable escaped as Python writes it (``\\x1b``,
    ``\\n``, ``\\u202e``): a file's string never moves the cursor, clears the screen, sets the
    terminal's title or starts a line of its own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def is_finite(value):
    """True for an integer (of any size) or a finite float; math.isfinite overflows on 10**400."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def number_phrase(value):
    """A number as a phrase, whatever its size (an integer of 5000 digits cannot even be printed)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("infinity" if value > 0 else "minus infinity")
    if isinstance(value, int) and abs(value) > MAX_COUNT:
        return f"{'minus ' if value < 0 else ''}a number of more than 15 digits"
    return repr(value)


def short(value, limit=80):
    """``value`` as a short phrase for a message or a line of ``info``: a file's strings can be of any
    length and hold any character, so control characters are escaped and what is longer than
    ``limit`` symbols is cut, saying how long it was."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = number_phrase(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except ValueError:   # a number JSON cannot write (NaN, 5000 digits) somewhere inside
            text = f"{kind_of(value)} that cannot be shown"
    shown = escaped(text)   # a newline in a file's string is shown as \\n, never as a line of its own
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text):,} symbols)"


def _hash(value):
    """A claimed SHA-256 as a message shows it: its first 12 digits."""
    return f"{short(value[:12], 12)}..." if isinstance(value, str) else short(value, 20)


def kind_of(value):
    """What kind of JSON value ``value`` is, as a message names it: "an object", "a list", "null"..."""
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def shown_alphabet(value):
    """An alphabet from the file, quoted: control characters escaped, cut after 60 symbols."""
    from .errors import shown
    return shown(value, 60) if isinstance(value, str) else short(value, 24)


def _depth(value):
    """How deeply ``value`` nests objects and lists (iteratively; stops counting past MAX_DEPTH)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


# The types a lineage's fields must have (a field may be missing; null is always allowed).
_TEXT, _NUMBER, _INT, _OBJECT, _OBJECTS = "text", "number", "integer", "object", "objects"
_MODEL_FIELDS = {"uid": _TEXT, "file_name": _TEXT, "sha256": _TEXT, "url": _TEXT, "train_dataset": _TEXT,
                 "accuracy": _NUMBER}
_NOTES = ("damaged", "contradiction", "foreign", "omitted")   # why an "unknown" lineage is unknown
_LINEAGE_FIELDS = {"written_by": _TEXT, "started_from": _OBJECT, "trained_on": _OBJECT, "measured": _OBJECT,
                   "exported": _OBJECT, **_MODEL_FIELDS, **{note: _TEXT for note in _NOTES}}
_STARTED_FIELDS = {"kind": _TEXT, "path": _TEXT, "lineage": _OBJECT, **_MODEL_FIELDS}
_TRAINED_FIELDS = {"datasets": _OBJECTS, "skipped": _OBJECT, "alphabet": _TEXT, "planned_steps": _INT,
                   "batch_size": _INT, "workers": _INT, "recipe": _OBJECT, "steps": _INT}
_MEASURED_FIELDS = {"protocol": _TEXT, "accuracy": _NUMBER, "best_accuracy": _NUMBER, "best_step": _INT,
                    "datasets": _OBJECTS}
_DATASET_FIELDS = {"path": _TEXT, "num_samples": _INT, "kept": _INT}
_EXPORTED_FIELDS = {"format": _TEXT, "by": _TEXT, "checkpoint": _TEXT, "checkpoint_sha256": _TEXT}


def _fits(value, kind):
    if value is None:
        return True
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _NUMBER:
        return type(value) in (int, float)
    if kind == _INT:
        return type(value) is int
    if kind == _OBJECT:
        return isinstance(value, dict)
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _field_problem(obj, fields, where):
    for key, kind in fields.items():
        if key in obj and not _fits(obj[key], kind):
            wanted = {_TEXT: "a string", _NUMBER: "a number", _INT: "an integer", _OBJECT: "an object",
                      _OBJECTS: "a list of objects"}[kind]
            return f"{where}{key} is {kind_of(obj[key])}, not {wanted}"
    return None


def _shape_problem(lineage):
    """Where ``lineage`` (a dict) has a field of the wrong type, as a phrase; else None. The chain of
    parents (``started_from.lineage``) is walked iteratively."""
    where = ""
    while True:
        origin = lineage.get("origin")
        if not isinstance(origin, str):
            if "origin" not in lineage:
                return f"{where}origin is missing"
            return f"{where}origin is {kind_of(origin)}, not a string"
        if origin not in _ORIGINS:
            from .errors import shown
            return f"{where}origin {shown(origin, 40)} is not one this cnnctc knows"
        problem = _field_problem(lineage, _LINEAGE_FIELDS, where)
        if problem:
            return problem
        for key, fields in (("trained_on", _TRAINED_FIELDS), ("measured", _MEASURED_FIELDS),
                            ("exported", _EXPORTED_FIELDS)):
            part = lineage.get(key)
            if isinstance(part, dict):
                problem = _field_problem(part, fields, f"{where}{key}.")
                for item in part.get("datasets") or []:
                    problem = problem or _field_problem(item, _DATASET_FIELDS, f"{where}{key}.datasets[].")
                if problem:
                    return problem
        start = lineage.get("started_from")
        if not isinstance(start, dict):
            return None
        problem = _field_problem(start, _STARTED_FIELDS, f"{where}started_from.")
        if problem:
            return problem
        if not isinstance(start.get("lineage"), dict):
            return None
        lineage, where = start["lineage"], f"{where}started_from.lineage."


def _checked_shape(value):
    """``value`` (parsed JSON) when it is a lineage of the right types within the limits, else a damaged one."""
    if not isinstance(value, dict):
        return _damaged(f"it is {kind_of(value)}, not an object")
    if _depth(value) > MAX_DEPTH:
        return _damaged(f"it is nested deeper than {MAX_DEPTH} levels")
    problem = _shape_problem(value)
    return _damaged(problem) if problem else value


def parse_lineage(text):
    """The lineage in ``text`` (JSON text, or an object already parsed): UNKNOWN when there is none,
    a damaged one (``{"origin": "unknown", "damaged": why}``) when it cannot be used as it is: not
    JSON, longer than MAX_CHARS, nested deeper than MAX_DEPTH, or of the wrong types."""
    if text is None:
        return dict(UNKNOWN)
    if isinstance(text, dict):
        if _depth(text) > MAX_DEPTH:
            return _damaged(f"it is nested deeper than {MAX_DEPTH} levels")
        if len(json.dumps(text, ensure_ascii=False, default=str)) > MAX_CHARS:
            return _damaged(f"it is longer than {MAX_CHARS >> 20} MiB")
        return _checked_shape(text)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return _damaged(f"it is {kind_of(text)}, not JSON text")
    if len(text) > MAX_CHARS:
        return _damaged(f"it is {len(text) / 2**20:.1f} MiB long, more than the {MAX_CHARS >> 20} MiB a lineage "
                        "may take")
    try:
        value = json.loads(text)
    except RecursionError:
        return _damaged(f"it is nested deeper than {MAX_DEPTH} levels")
    except ValueError:
        return _damaged("it is not valid JSON")
    return _checked_shape(value)


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


def _registered_uid(uid):
    from .registry import list_models
    return next((entry.manifest for entry in list_models() if entry.manifest.uid == uid), None)


def _claims_problem(claims, where, *, own):
    """Where a model's claims (uid, hash, accuracy) contradict the registry's entry for that uid, as
    a phrase; None when they agree or the uid is not registered (nothing to check against). ``own``:
    a file's claims about itself (it is that model's asset), so a registered uid must come with that
    uid's weights; a run's parent (``started_from``) is checked only where it names the registered
    weights, since a user's manifest may keep a uid for weights of its own."""
    uid = claims.get("uid")
    known = _registered_uid(uid) if isinstance(uid, str) else None
    if known is None:
        return None
    sha256 = claims.get("sha256")
    if not isinstance(sha256, str) or sha256.lower() != known.sha256:
        if not own:
            return None
        return (f"{where}names model {uid} with sha256 {_hash(sha256)}, but that model's asset is "
                f"{_hash(known.sha256)}")
    accuracy = claims.get("accuracy")
    if accuracy is not None and (known.accuracy is None or not is_finite(accuracy)
                                 or abs(accuracy - known.accuracy) > 1e-9):
        card = f"its card says {known.accuracy}%" if known.accuracy is not None else "its card gives none"
        return f"{where}gives model {uid} an accuracy of {short(accuracy, 12)}%, but {card}"
    return None


def _own_claims_problem(lineage, sha256, *, export, alphabet, width):
    """Where what ``lineage`` says about the very file it is in contradicts that file, as a phrase,
    else None: the alphabet it was trained with (``alphabet``: the file's own entry), the network's
    width (``width``: that of the file's Prediction.weight) and, for an export, the SHA-256 of the
    checkpoint it was exported from. None for what the file does not tell."""
    exported = lineage.get("exported")
    if isinstance(exported, dict) and export and sha256:
        claimed = exported.get("checkpoint_sha256")
        if isinstance(claimed, str) and claimed.lower() != sha256:
            return (f"it says it was exported from a checkpoint with sha256 {_hash(claimed)}, but the file says its "
                    f"weights are those of {_hash(sha256)}")
    if lineage.get("origin") != "finetune" or not isinstance(lineage.get("trained_on"), dict):
        return None
    trained = lineage["trained_on"]
    claimed = trained.get("alphabet")
    if isinstance(alphabet, str) and claimed is not None and claimed != alphabet:
        return (f"it says it was trained with the alphabet {shown_alphabet(claimed)}, but the file's alphabet is "
                f"{shown_alphabet(alphabet)}")
    recipe = trained.get("recipe")
    claimed = recipe.get("output_channel") if isinstance(recipe, dict) else None
    if isinstance(width, int) and claimed is not None and (type(claimed) is not int or claimed != width):
        return (f"it says the network is {short(claimed, 20)} wide (output_channel), but the file's weights are "
                f"{width} wide (its Prediction.weight)")
    return None


def _contradiction(lineage, sha256, *, export, alphabet=None, width=None):
    """Where a well-formed ``lineage`` contradicts what can be checked, as a phrase, else None: the
    hash of the file it describes (``sha256``: a checkpoint's own, an export's source checkpoint's;
    None when not known; for a parent, the hash its child's run recorded), what it says of the file
    itself (``alphabet`` and ``width``, the file's own, when known) and each model it names against
    the registry's card of that uid."""
    if not export and isinstance(lineage.get("exported"), dict):
        return (f"it says the file was exported to {short(lineage['exported'].get('format'), 20)}, but the file "
                "is a checkpoint")
    problem = _own_claims_problem(lineage, sha256, export=export, alphabet=alphabet, width=width)
    if problem:
        return problem
    where = ""
    while True:
        if lineage.get("origin") == "model":
            claimed, uid = lineage.get("sha256"), short(lineage.get("uid"), 60)
            if sha256 and (not isinstance(claimed, str) or claimed.lower() != sha256):
                if not where:
                    whose = "the weights it was exported from have sha256" if export else "the file's own sha256 is"
                    return (f"it claims to be the asset of model {uid} (sha256 {_hash(claimed)}), but {whose} "
                            f"{_hash(sha256)}")
                return (f"its {where} claims to be the asset of model {uid} (sha256 {_hash(claimed)}), but that "
                        f"checkpoint's sha256 is {_hash(sha256)}")
            problem = _claims_problem(lineage, f"its {where} " if where else "it ", own=True)
            if problem:
                return problem
        start = lineage.get("started_from")
        if not isinstance(start, dict):
            return None
        where = f"{where}.started_from" if where else "started_from"
        if start.get("kind") == "model":
            problem = _claims_problem(start, f"its {where} ", own=False)
            if problem:
                return problem
        if not isinstance(start.get("lineage"), dict):
            return None
        sha256 = start["sha256"].lower() if isinstance(start.get("sha256"), str) else None
        lineage, where = start["lineage"], f"{where}.lineage"


def checked_lineage(lineage, sha256, *, export=False, alphabet=None, width=None):
    """``lineage`` (from :func:`parse_lineage`) when its claims hold against what can be checked,
    else ``{"origin": "unknown", "contradiction": why}`` (its claims are dropped, never shown as
    true). ``sha256``: the file's own (a checkpoint) or its source checkpoint's (an ``export``);
    ``alphabet``: the alphabet the file holds, ``width``: its network's width (its Prediction.weight's),
    each None when the file does not say."""
    problem = _contradiction(lineage, sha256.lower() if isinstance(sha256, str) else None, export=export,
                             alphabet=alphabet, width=width)
    return {"origin": "unknown", "contradiction": problem} if problem else lineage


def file_lineage(saved, sha256, *, alphabet=None, width=None):
    """The lineage of a checkpoint whose SHA-256 is ``sha256``: its saved one (``saved``, the
    checkpoint's lineage entry or None) checked against the file (its hash, and ``alphabet`` and
    ``width`` from :func:`state_facts` when known), else the registry's when its hash is a registered
    asset's, else UNKNOWN. Damaged or contradicted, it says so (never raises)."""
    lineage = parse_lineage(saved)
    if lineage != UNKNOWN:
        return checked_lineage(lineage, sha256, alphabet=alphabet, width=width)
    registered = _registered_with_sha256(sha256) if sha256 else None
    return model_lineage(registered) if registered is not None else lineage


_OMITTED = "older ancestors are left out: the lineage would be longer or nested deeper than cnnctc copies"


def _bounded(lineage, max_depth, max_chars):
    """``lineage`` cut to at most ``max_depth`` levels and ``max_chars`` of JSON, the oldest ancestors
    first (what a new checkpoint or an export copies, so that it is always read back whole)."""
    def fits(value):
        return _depth(value) <= max_depth and len(json.dumps(value, ensure_ascii=False)) <= max_chars
    if fits(lineage):
        return lineage
    lineage = copy.deepcopy(lineage)
    while True:
        chain = [lineage]
        while isinstance(chain[-1].get("started_from"), dict) and isinstance(
                chain[-1]["started_from"].get("lineage"), dict):
            chain.append(chain[-1]["started_from"]["lineage"])
        if len(chain) == 1:
            return {"origin": "unknown", "omitted": f"the lineage is longer or nested deeper than cnnctc copies "
                                                    f"({max_chars >> 10} KiB, {max_depth} levels)"}
        chain[-2]["started_from"]["lineage"] = {"origin": "unknown", "omitted": _OMITTED}
        if fits(lineage):
            return lineage


def started_from_none():
    return {"kind": "none"}


def started_from_model(manifest):
    """A run started from a model's asset (a hub uid or a user's manifest), fetched and verified, so
    its hash is the manifest's; that model's claims are kept here, under the parent."""
    return {"kind": "model", **{k: v for k, v in model_lineage(manifest).items() if k != "origin"}}


def started_from_checkpoint(path, sha256, saved_lineage):
    """A run started from a local checkpoint: the path as given, its SHA-256 and its own lineage."""
    lineage = _bounded(file_lineage(saved_lineage, sha256), _COPY_DEPTH - 2, _COPY_CHARS)
    return {"kind": "checkpoint", "path": str(path), "sha256": sha256, "lineage": lineage}


def export_lineage(checkpoint_lineage, *, fmt, file_name, sha256):
    """An exported file's lineage: its checkpoint's (cut to what cnnctc copies), and what exported
    it from which file."""
    lineage = dict(_bounded(checkpoint_lineage, _COPY_DEPTH, _COPY_CHARS))
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
