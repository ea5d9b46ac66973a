"""What a model file says about itself: a checkpoint's entries, an exported file's description
(an ONNX file's metadata, the JSON file beside a MindIR or AIR file) and the lineage record each holds.

Every reader and writer of model files reads these the same way, so they are read here, below all
of them: this module imports none of checkpoint writing, loading, exporting or running, and
:mod:`cnnctc.lineage` (what a lineage means and how it is checked) builds on it. No MindSpore
import until a checkpoint is read (``info`` on an ``.onnx`` file and the onnxruntime path must not
pay for it).
"""
import json
import os
import re
from json.decoder import scanstring
from pathlib import Path

from ._files import NotRegularFile, open_regular
from ._signals import interrupt_deferred
from .alphabet import check_alphabet as shared_check_alphabet
from .errors import CheckpointError, CnnctcError, shown

__all__ = ["ALPHABET_KEY", "LINEAGE_KEY", "MANIFEST_KEY", "MAX_CHARS", "MAX_DEPTH", "read_checkpoint",
           "checkpoint_entries", "state_facts", "check_alphabet", "is_training_state", "error_reason",
           "loads_with_lineage", "metadata_values", "NoCnnctcMetadata", "read_manifest", "sidecar_path",
           "read_sidecar", "foreign_sidecar"]

ALPHABET_KEY = "alphabet"          # checkpoint entry: the alphabet the weights read
LINEAGE_KEY = "cnnctc_lineage"     # checkpoint entry and ONNX/sidecar metadata key, a JSON object
MANIFEST_KEY = "cnnctc_manifest"   # ONNX metadata property and sidecar member: the manifest JSON
# What is read: a lineage longer (as JSON text) or deeper than this is damaged. A chain of thirty
# fine-tunings, each from the last one's checkpoint, is about 60 levels deep and 60 KB long.
MAX_CHARS = 1 << 20
MAX_DEPTH = 100


# --- a checkpoint's entries ----------------------------------------------------------------------

# Entries MindSpore's optimizers and training wrappers add to a checkpoint.
_OPTIMIZER_PREFIXES = ("moment.", "mean_square.", "mean_grad.", "moments.", "accum.")
_TRAINING_SCALARS = {"global_step", "learning_rate", "scale_sense", "current_iterator_step",
                     "last_overflow_iterator_step", "epoch_num", "step_num"}
_HEAD = "Prediction.weight"   # the network's last layer: its shape is (classes, width)


def is_training_state(name):
    """True for a checkpoint entry of the optimizer or the training wrapper, not a weight."""
    return name.startswith(_OPTIMIZER_PREFIXES) or name in _TRAINING_SCALARS


def error_reason(exc):
    """The first line of an exception's message, without Python's [Errno N] preamble."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_readable(path):
    """Raise CheckpointError unless ``path`` is a non-empty regular file this process can open."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
    except NotRegularFile as exc:
        raise CheckpointError(f"{path}: {exc.kind}, not a checkpoint file") from None
    except FileNotFoundError:  # a dangling symlink too
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {error_reason(exc)}") from None
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty, not a checkpoint (an interrupted copy or download?)")


def check_alphabet(alphabet, source="checkpoint"):
    """Raise CheckpointError when a checkpoint's saved alphabet is unusable (see :mod:`cnnctc.alphabet`)."""
    shared_check_alphabet(alphabet, f"{source}: its saved alphabet", CheckpointError,
                          advice="the checkpoint is damaged or was not written by cnnctc")


def read_checkpoint(path, *, weights_only=False):
    """The name -> value mapping of a checkpoint file, with a one-line CheckpointError for bad files.

    ``weights_only`` leaves the optimizer state on disk (three quarters of the hub file). A saved
    alphabet that is empty or repeats a symbol is refused here (see :func:`check_alphabet`).
    """
    from ._mindspore import mindspore as ms
    path = Path(path)
    _check_readable(path)
    choice = (lambda name: not is_training_state(name)) if weights_only else None
    try:
        with interrupt_deferred():  # MindSpore reports a Ctrl-C inside it as an unreadable file
            state = ms.load_checkpoint(str(path), choice_func=choice)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001  MindSpore raises ValueError, RuntimeError, TypeError, protobuf errors...
        detail = error_reason(exc)
        if "Failed to read the checkpoint file" in detail or "cannot be parsed" in detail:
            detail = "it is damaged, truncated or another kind of file"
        elif "dict is empty" in detail:
            detail = "it holds no weights" if weights_only else "it holds no entries"
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint: {detail}") from None
    if not state:
        raise CheckpointError(f"{path}: the checkpoint holds no entries")
    if isinstance(state.get(ALPHABET_KEY), str):
        check_alphabet(state[ALPHABET_KEY], str(path))
    return state


def checkpoint_entries(path):
    """The entries of the checkpoint at ``path`` that describe it, those it holds: its lineage, its
    alphabet and its head (whose shape gives the network's width). Only those are read; a file
    without them (written before lineage was kept) gives {}."""
    from ._mindspore import mindspore as ms
    _check_readable(Path(path))
    wanted = {LINEAGE_KEY, ALPHABET_KEY, _HEAD}
    try:
        with interrupt_deferred():
            return ms.load_checkpoint(str(path), choice_func=lambda name: name in wanted)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:  # noqa: BLE001  no such entry ("dict is empty"): written before lineage was kept
        return {}


def state_facts(state):
    """(alphabet, width) a checkpoint's entries tell about its own weights, each None when they do
    not: its alphabet entry and the width of its Prediction.weight (what a lineage is checked against)."""
    alphabet = state.get(ALPHABET_KEY)
    head = state.get(_HEAD)
    shape = getattr(head, "shape", None)
    width = int(shape[1]) if shape is not None and len(shape) == 2 else None
    return (alphabet if isinstance(alphabet, str) else None), width


# --- JSON that holds a lineage -----------------------------------------------------------------

_SPECIAL = re.compile(r'["\[\]{},]')
_SPACE = re.compile(r"[ \t\n\r]*")


def _value_end(text, pos):
    """The end of the JSON value that starts at ``pos`` (iteratively: any depth; strings respected)."""
    depth, i = 0, pos
    while True:
        match = _SPECIAL.search(text, i)
        if match is None:
            if depth:
                raise ValueError("unterminated value")
            return len(text)
        i, char = match.start(), match.group()
        if char == '"':
            _, i = scanstring(text, i + 1)
            if depth == 0:
                return i
            continue
        if char in "[{":
            depth += 1
        elif depth == 0:   # a scalar ends at the comma or the brace after it
            return i
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def loads_with_lineage(text):
    """``json.loads(text)`` for a JSON object that holds a lineage under LINEAGE_KEY (a MindIR's
    description): a lineage nested too deeply for the parser is kept as its JSON text (which
    :func:`cnnctc.lineage.parse_lineage` calls damaged) and the other members are read.
    RecursionError when another member is too deep, ValueError when the text is not a JSON object."""
    try:
        return json.loads(text)
    except RecursionError:
        pass
    found = {}
    i = _SPACE.match(text, 0).end()
    if text[i:i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _SPACE.match(text, i + 1).end()
    if text[i:i + 1] == "}":
        return found
    while True:
        if text[i:i + 1] != '"':
            raise ValueError(f"expected a member name at character {i}")
        key, i = scanstring(text, i + 1)
        i = _SPACE.match(text, i).end()
        if text[i:i + 1] != ":":
            raise ValueError(f"expected ':' at character {i}")
        i = _SPACE.match(text, i + 1).end()
        end = _value_end(text, i)
        try:
            found[key] = json.loads(text[i:end])
        except RecursionError:
            if key != LINEAGE_KEY:
                raise
            found[key] = text[i:end]
        i = _SPACE.match(text, end).end()
        if text[i:i + 1] == "}":
            return found
        if text[i:i + 1] != ",":
            raise ValueError(f"expected ',' or '}}' at character {i}")
        i = _SPACE.match(text, i + 1).end()


# --- an ONNX file's metadata ---------------------------------------------------------------------

# Files exported before metadata values were JSON throughout held these as bare strings.
_BARE_STRING_KEYS = {"alphabet", "input_layout", "resample", "pad", "color", "source_uid", "source_sha256",
                     "source_checkpoint", "format", "exported_by", "quantization", "float_model"}


def metadata_values(metadata):
    """An exported file's metadata (str -> str) with every value decoded from JSON.

    Files written before the lineage was recorded held some values as bare strings (e.g. an
    ``alphabet`` of digits, which would read as a number): those are kept as written, as is a value
    that is not JSON, is nested too deeply to decode, or (the lineage) is longer than a lineage may
    be (:func:`cnnctc.lineage.parse_lineage` calls those damaged).
    """
    every_value_json = LINEAGE_KEY in metadata
    values = {}
    for key, text in metadata.items():
        if (not every_value_json and key in _BARE_STRING_KEYS) or (key == LINEAGE_KEY and len(text) > MAX_CHARS):
            values[key] = text
            continue
        try:
            values[key] = json.loads(text)
        except (ValueError, RecursionError):
            values[key] = text
    return values


class NoCnnctcMetadata(CnnctcError):
    """An ONNX file without cnnctc's metadata (another exporter's); ``description`` says what it is."""

    def __init__(self, message, description):
        super().__init__(message)
        self.description = description


def read_manifest(metadata, where):
    """The Manifest in an exported file's metadata (a str -> str mapping)."""
    from .manifest import Manifest
    text = metadata.get(MANIFEST_KEY)
    if text is None:
        raise NoCnnctcMetadata(f"{where}: an ONNX model without cnnctc metadata (no alphabet or preprocessing); "
                               "export it with 'cnnctc export --format onnx'",
                               "no cnnctc metadata: not exported by cnnctc, so no alphabet or preprocessing to read "
                               "it with")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CnnctcError(f"{where}: its cnnctc metadata is not valid JSON ({exc})") from None
    except RecursionError:
        raise CnnctcError(f"{where}: its cnnctc metadata is nested too deeply to be a manifest; export it "
                          "again") from None
    manifest = Manifest.from_dict(data, source=where)
    from .registry import check_export_description
    check_export_description(metadata_values(metadata), manifest, where, subject="its metadata",
                             ending="it is not the model it claims to be, export it again")
    return manifest


# --- the description beside a MindIR or AIR file -------------------------------------------------

# A description is a few KB, its lineage at most what cnnctc copies (half a MiB): anything this size is not one.
_MAX_SIDECAR = 16 << 20


def sidecar_path(path):
    """The JSON file beside a MindIR or AIR file that holds its manifest: ``<file>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def foreign_sidecar(side):
    """Why the file at ``side`` is not a description cnnctc export wrote, or None (also when there is none)."""
    if not os.path.lexists(side):
        return None
    if os.path.islink(side):
        return "a symbolic link"
    try:
        with open_regular(side) as f:
            text = f.read(_MAX_SIDECAR + 1)
    except NotRegularFile as exc:
        return exc.kind
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    if len(text) > _MAX_SIDECAR:
        return f"larger than {_MAX_SIDECAR >> 20} MiB"
    try:
        data = loads_with_lineage(text.decode("utf-8"))
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(data, dict) or MANIFEST_KEY not in data:
        return f"it holds no {MANIFEST_KEY!r}"
    return None


def read_sidecar(path):
    """(manifest, description dict) of an exported MindIR/AIR file, from ``<file>.json``."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise CnnctcError(f"{side} is missing: it holds the alphabet and preprocessing of {path.name} "
                          "(cnnctc export writes it beside the model; copy it along)")
    try:
        with open(side, "rb") as f:
            text = f.read(_MAX_SIDECAR + 1)
        if len(text) > _MAX_SIDECAR:
            raise CnnctcError(f"{side}: larger than {_MAX_SIDECAR >> 20} MiB, not a cnnctc export description; "
                              f"export {path.name} again")
        info = loads_with_lineage(text.decode("utf-8"))   # a lineage too deep to read is damaged, not fatal
    except (OSError, ValueError) as exc:
        raise CnnctcError(f"{side}: cannot read it ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise CnnctcError(f"{side}: cannot read it (nested too deeply to be a cnnctc export description); export "
                          f"{path.name} again") from None
    if not isinstance(info, dict) or not isinstance(info.get(MANIFEST_KEY), dict):
        raise CnnctcError(f"{side}: not a cnnctc export description (no {MANIFEST_KEY!r} object)")
    from .manifest import Manifest
    from .registry import check_export_description
    manifest = Manifest.from_dict(info[MANIFEST_KEY], source=side)
    check_export_description(info, manifest, side, subject="it",
                             ending=f"it does not describe {path.name} as exported, export it again")
    batch = info.get("batch_size")
    if batch is not None and (type(batch) is not int or batch < 1 or batch > 4096):
        raise CnnctcError(f"{side}: batch_size must be a positive integer or null, got {shown(batch)}")
    return manifest, info
