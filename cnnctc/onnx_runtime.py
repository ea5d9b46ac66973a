"""Run exported ONNX files on onnxruntime, without MindSpore.

``OnnxRunner(path)`` reads the manifest (alphabet, preprocessing) from the file's metadata, so
``Recognizer("model.onnx")`` needs nothing else. This module must never import MindSpore (nor
the package modules that do): the ONNX path starts in well under a second.
"""
import json
import logging
from pathlib import Path

import numpy as np

from .errors import CnnctcError

__all__ = ["OnnxRunner", "require_onnxruntime", "read_manifest", "metadata_values", "run_in_batches", "MANIFEST_KEY"]

log = logging.getLogger(__name__)

MANIFEST_KEY = "cnnctc_manifest"   # the metadata property holding the manifest JSON
_INSTALL = "pip install 'cnnctc[onnx]'"
_announced = False   # the runtime is named once per process, as the MindSpore loader does


def require_onnxruntime():
    """``import onnxruntime``, or a one-line CnnctcError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise CnnctcError(f"onnxruntime is needed to run .onnx files ({exc}); {_INSTALL}") from None
    return onnxruntime


def run_in_batches(run, batch, fixed):
    """``run`` over ``batch`` in chunks of ``fixed`` rows (the last one padded by repetition),
    or on the whole batch when ``fixed`` is None."""
    if fixed is None or len(batch) == fixed:
        return run(batch)
    outputs = []
    for start in range(0, len(batch), fixed):
        chunk = batch[start:start + fixed]
        count = len(chunk)
        if count < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - count, axis=0)])
        outputs.append(run(chunk)[:count])
    return np.concatenate(outputs)


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


# Files exported before metadata values were JSON throughout held these as bare strings.
_BARE_STRING_KEYS = {"alphabet", "input_layout", "resample", "pad", "color", "source_uid", "source_sha256",
                     "source_checkpoint", "format", "exported_by", "quantization", "float_model"}


def metadata_values(metadata):
    """An exported file's metadata (str -> str) with every value decoded from JSON.

    Files written before the lineage was recorded held some values as bare strings (e.g. an
    ``alphabet`` of digits, which would read as a number): those are kept as written.
    """
    from .lineage import LINEAGE_KEY
    every_value_json = LINEAGE_KEY in metadata
    values = {}
    for key, text in metadata.items():
        if not every_value_json and key in _BARE_STRING_KEYS:
            values[key] = text
            continue
        try:
            values[key] = json.loads(text)
        except ValueError:
            values[key] = text
    return values


def read_manifest(metadata, where):
    """The Manifest in an exported file's metadata (a str -> str mapping)."""
    from .manifest import Manifest
    text = metadata.get(MANIFEST_KEY)
    if text is None:
        raise CnnctcError(f"{where}: an ONNX model without cnnctc metadata (no alphabet or preprocessing); "
                          "export it with 'cnnctc export --format onnx'")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CnnctcError(f"{where}: its cnnctc metadata is not valid JSON ({exc})") from None
    return Manifest.from_dict(data, source=where)


class OnnxRunner:
    """An exported ONNX file on onnxruntime's CPU provider.

    ``.manifest`` is read from the file; calling the runner maps (B, 3, H, W) float32 numpy
    batches to (B, T, C) float32 logits for any B (a file with a fixed batch is fed in chunks
    of that size, the last one padded). ``threads``: onnxruntime's intra-op threads (default:
    its own choice, one per physical core).
    """

    def __init__(self, path, *, threads=None):
        ort = require_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise CnnctcError(f"{path}: no such ONNX file" if not path.exists() else f"{path}: not a file")
        if threads is not None and (type(threads) is not int or threads < 1):
            raise CnnctcError(f"threads must be a positive integer, got {threads!r}")
        options = ort.SessionOptions()
        options.log_severity_level = 3   # onnxruntime's warnings are for developers
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable and invalid models
            raise CnnctcError(f"{path}: not a readable ONNX model ({_one_line(exc)})") from None
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.manifest = read_manifest(self.metadata, path)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise CnnctcError(f"{path}: expected one (batch, 3, height, width) input, got "
                              f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        batch = inputs[0].shape[0]
        self.batch_size = batch if isinstance(batch, int) and batch > 0 else None
        global _announced
        if not _announced:
            log.info("onnxruntime %s on CPU", ort.__version__)
            _announced = True

    def __call__(self, batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return run_in_batches(self._run, batch, self.batch_size)

    def _run(self, batch):
        return self.session.run([self.output_name], {self.input_name: batch})[0].astype(np.float32, copy=False)
