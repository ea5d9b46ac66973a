"""What ``cnnctc info --checkpoint FILE`` reads of a model file and prints of its lineage.

:func:`read_model_lineage` opens a ``.ckpt``, ``.onnx`` or ``.mindir``/``.air`` file as the
commands that use it do (an ``.onnx`` file through :class:`cnnctc.onnx_runtime.OnnxRunner`, as
predict opens it, so every check of the file holds) and checks its lineage with
:mod:`cnnctc.lineage`; so this module sits above the runners, and :mod:`cnnctc.lineage` stays data
and checks below them. MindSpore is imported for a ``.ckpt`` only.

What ``info`` shows of a lineage is data: every string with its control characters escaped and cut
short, a count that is no count (negative, more than 15 digits, NaN) shown as damaged
(:func:`describe_lineage`); its JSON is always valid JSON (:func:`lineage_json`).
"""
import json
import math
import re
from pathlib import Path

from .errors import CnnctcError, shown
from .lineage import (MAX_COUNT, UNKNOWN, checked_lineage, checkpoint_manifest, escaped, file_lineage, is_finite,
                      kind_of, number_phrase, parse_lineage, short, shown_alphabet)
from .model_files import (LINEAGE_KEY, MANIFEST_KEY, NoCnnctcMetadata, metadata_values, read_checkpoint, read_sidecar,
                          state_facts)

__all__ = ["read_model_lineage", "describe_lineage", "lineage_json"]

# At most this many datasets and ancestors are shown by ``info`` (``--json`` has them all).
_SHOWN_DATASETS = 10
_SHOWN_ANCESTORS = 20


def read_model_lineage(path, base=None):
    """(kind, lineage, manifest dict) of a ``.ckpt``, ``.onnx`` or ``.mindir``/``.air`` file.

    The manifest is the one that reads that very file (an export's own; for a checkpoint,
    ``base`` — the registry's default if None — fitted to it). MindSpore is imported for a
    ``.ckpt`` only.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .onnx_runtime import OnnxRunner   # opened as predict opens it: every check of the file holds
        try:
            runner = OnnxRunner(path)
        except NoCnnctcMetadata as exc:   # another exporter's file: say what can be said
            return "onnx", {"origin": "unknown", "foreign": exc.description}, None
        values = metadata_values(runner.metadata)
        lineage = checked_lineage(parse_lineage(values.get(LINEAGE_KEY)), runner.manifest.sha256, export=True,
                                  alphabet=runner.manifest.alphabet)
        return "onnx", lineage, values.get(MANIFEST_KEY)
    if suffix in (".mindir", ".air"):
        if not path.is_file():
            raise CnnctcError(f"{path}: no such {suffix[1:].upper()} file")
        manifest, info = read_sidecar(path)
        lineage = checked_lineage(parse_lineage(info.get(LINEAGE_KEY)), manifest.sha256, export=True,
                                  alphabet=manifest.alphabet)
        return suffix[1:], lineage, info.get(MANIFEST_KEY)
    from .download import sha256_file
    from .registry import get_model
    state = read_checkpoint(path, weights_only=True)
    sha256 = sha256_file(path)
    manifest = checkpoint_manifest(base or get_model().manifest, state, file_name=path.name, sha256=sha256)
    alphabet, width = state_facts(state)
    return "ckpt", file_lineage(state.get(LINEAGE_KEY), sha256, alphabet=alphabet, width=width), manifest.to_dict()


# --- what ``info --checkpoint`` shows: every value from the file as data, never as the terminal's ---

def _damaged_value(value, what):
    """A value of the file where ``what`` was expected, shown as what it is: '? (damaged: -5, not a count)'."""
    if type(value) in (int, float):
        phrase = number_phrase(value)
    else:
        phrase = kind_of(value) + (f" {shown(value, 24)}" if isinstance(value, str) else "")
    return f"? (damaged: {phrase}, not {what})"


def _count(value, most=MAX_COUNT, what="a count"):
    """A count from the file (samples, steps, a batch, a width, a seed): '?' when it is not given,
    '? (damaged: ...)' when it is no whole number from 0 to ``most``."""
    if value is None:
        return "?"
    if type(value) is int and 0 <= value <= most:
        return str(value)
    return _damaged_value(value, what)


def _percent(value, missing="-", digits=None):
    """An accuracy from the file: a finite number from 0 to 100, else 'damaged (...)'."""
    if value is None:
        return missing
    if is_finite(value) and 0 <= value <= 100:
        return f"{value:.{digits}f}%" if digits is not None else f"{value}%"
    return _damaged_value(value, "a percentage")


def _accuracy(value):
    return _percent(value, digits=2)


def _rate(value):
    """A learning rate from the file: a finite number from 0 to 1000, else 'damaged (...)'."""
    if value is None:
        return "?"
    if is_finite(value) and 0 <= value <= 1000:
        return repr(value)
    return _damaged_value(value, "a learning rate")


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _sha256(value):
    """A SHA-256 from the file: its 64 hex digits, else 'damaged (...)'."""
    if value is None:
        return "?"
    if isinstance(value, str) and _SHA256.fullmatch(value):
        return value
    return _damaged_value(value, "a SHA-256")


def _text(value, limit=80):
    """A string from the file, as one printable line of at most ``limit`` symbols ('?' when not given)."""
    return "?" if value is None else short(value, limit)


def _unknown_line(lineage):
    """The one line of a lineage whose origin is unknown: why it is."""
    if lineage.get("damaged"):
        return (f"damaged ({short(lineage['damaged'], 200)}): where this file came from is unknown; its weights "
                "still load")
    if lineage.get("contradiction"):
        return (f"contradicted: {short(lineage['contradiction'], 300)}; its claims are not shown, where this file "
                "came from is unknown")
    if lineage.get("foreign"):
        return f"unknown ({short(lineage['foreign'], 300)})"
    if lineage.get("omitted"):
        return f"unknown ({short(lineage['omitted'], 200)})"
    return "unknown (no lineage recorded: written before cnnctc kept one, or by another tool)"


def _model_claims(claims, prefix=""):
    text = f"; {prefix}accuracy {_percent(claims['accuracy'])}" if claims.get("accuracy") is not None else ""
    text += f", trained on {_text(claims['train_dataset'], 120)}" if claims.get("train_dataset") else ""
    return text


def _dataset_lines(datasets, pad):
    lines = [f"{pad}trained on:   {_text(data.get('path'), 200)} ({_count(data.get('kept'))} of "
             f"{_count(data.get('num_samples'))} samples kept)" for data in datasets[:_SHOWN_DATASETS]]
    if len(datasets) > _SHOWN_DATASETS:
        lines.append(f"{pad}trained on:   and {len(datasets) - _SHOWN_DATASETS:,} more datasets (--json lists them)")
    return lines


def _origin_lines(lineage, indent, ancestors=0):
    pad = " " * indent
    origin = lineage.get("origin")
    if origin == "model":
        return [f"{pad}the asset of model {_text(lineage.get('uid'))} (sha256 {_sha256(lineage.get('sha256'))}"
                f"{_model_claims(lineage)})"]
    if origin != "finetune":
        return [pad + _unknown_line(lineage)]
    lines = []
    start = lineage.get("started_from") or {}
    kind = start.get("kind")
    if kind == "model":
        lines.append(f"{pad}started from: model {_text(start.get('uid'))} (sha256 {_sha256(start.get('sha256'))}"
                     f"{_model_claims(start, 'its ')})")
    elif kind == "checkpoint":
        lines.append(f"{pad}started from: checkpoint {_text(start.get('path'), 200)} (sha256 "
                     f"{_sha256(start.get('sha256'))}), whose lineage is:")
        if ancestors >= _SHOWN_ANCESTORS:
            lines.append(f"{pad}    (older ancestors are not shown: --json has them)")
        else:
            lines += _origin_lines(start.get("lineage") or UNKNOWN, indent + 4, ancestors + 1)
    elif kind == "none":
        lines.append(f"{pad}started from: random weights")
    else:
        lines.append(f"{pad}started from: unknown")
    trained = lineage.get("trained_on") or {}
    lines += _dataset_lines(trained.get("datasets") or [], pad)
    recipe = trained.get("recipe") if isinstance(trained.get("recipe"), dict) else {}
    lines.append(f"{pad}training:     step {_count(trained.get('steps'))} of {_count(trained.get('planned_steps'))}, "
                 f"batch {_count(trained.get('batch_size'))} x {_count(trained.get('workers', 1))} workers, lr "
                 f"{_rate(recipe.get('lr'))}, width {_count(recipe.get('output_channel'))}, seed "
                 f"{_count(trained.get('seed'), 2 ** 64, 'a seed')}, alphabet "
                 f"{shown_alphabet(trained.get('alphabet'))}")
    measured = lineage.get("measured")
    if not measured:
        lines.append(f"{pad}measured:     nothing (no --valid)")
    else:
        datasets = measured.get("datasets") or []
        names = ", ".join(f"{_text(d.get('path'), 120)} ({_count(d.get('kept'))} kept)"
                          for d in datasets[:_SHOWN_DATASETS])
        if len(datasets) > _SHOWN_DATASETS:
            names += f" and {len(datasets) - _SHOWN_DATASETS:,} more"
        lines.append(f"{pad}measured:     {_accuracy(measured.get('accuracy'))} at this step, best "
                     f"{_accuracy(measured.get('best_accuracy'))} at step {_count(measured.get('best_step'))} "
                     f"({_text(measured.get('protocol'), 40)} protocol on {names})")
    return lines


def describe_lineage(path, kind, lineage):
    """The lines ``cnnctc info --checkpoint`` prints for a file's lineage. Every value comes from the
    file, so each is shown as data: control characters escaped, strings cut, a count that is no
    count (negative, 401 digits, NaN) shown as damaged."""
    lines = [f"file:         {escaped(str(path))} ({kind})"]
    exported = lineage.get("exported")
    if exported:
        lines.append(f"exported:     {_text(exported.get('format'), 20)} by {_text(exported.get('by'), 80)} from "
                     f"{_text(exported.get('checkpoint'), 200)} (sha256 {_sha256(exported.get('checkpoint_sha256'))})")
    if lineage.get("origin") == "finetune":
        lines.append(f"written by:   {_text(lineage.get('written_by'))}")
    lines.append("lineage:" + ("" if lineage.get("origin") == "finetune" else
                              " " + _origin_lines(lineage, 0)[0].strip()))
    if lineage.get("origin") == "finetune":
        lines += _origin_lines(lineage, 2)
    return lines


def _json_safe(value):
    """``value`` with what JSON cannot hold made JSON: NaN and infinities as the strings "NaN",
    "Infinity", "-Infinity", an integer too long to write as a string saying so."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if type(value) is int and value.bit_length() > 10_000:
        return f"{'-' if value < 0 else ''}a number of more than 3,000 digits"
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _json_escape(char):
    if ord(char) > 0xFFFF:
        code = ord(char) - 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{ord(char):04x}"


def lineage_json(value, *, ensure_ascii=False, indent=2):
    """``value`` (a lineage, or a report holding one) as valid JSON text that any terminal shows as
    text: NaN or an integer of thousands of digits made JSON (:func:`_json_safe`), and every
    character that is not printable (C1 controls, bidi overrides, U+2028, lone surrogates) written as
    a ``\\u`` escape; json already escapes C0 controls."""
    text = json.dumps(_json_safe(value), indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)
    if text.replace("\n", "").isprintable():
        return text
    return "".join(c if c == "\n" or c.isprintable() else _json_escape(c) for c in text)
