"""Run exported ONNX files on onnxruntime, without MindSpore.

``OnnxRunner(path)`` reads the manifest (alphabet, preprocessing) from the file's metadata, so
``Recognizer("model.onnx")`` needs nothing else. This module must never import MindSpore (nor
the package modules that do): the ONNX path starts in well under a second.
"""
import logging
import mmap
from pathlib import Path

import numpy as np

from ._checks import positive_int
from .errors import CnnctcError
# What an exported file's metadata says is read as every model file's description is.
from .model_files import MANIFEST_KEY, NoCnnctcMetadata, metadata_values, read_manifest

__all__ = ["OnnxRunner", "NoCnnctcMetadata", "require_onnxruntime", "read_manifest", "metadata_values",
           "run_in_batches", "check_outputs", "non_finite_tensor", "MANIFEST_KEY"]

log = logging.getLogger(__name__)

_INSTALL = "pip install 'cnnctc[onnx]'"
_announced = False   # the runtime is named once per process, as the MindSpore loader does


def require_onnxruntime():
    """``import onnxruntime``, or a one-line CnnctcError saying how to install it."""
    from ._native import quiet_native_stderr
    try:
        with quiet_native_stderr():
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


# Non-finite weights -------------------------------------------------------------------------
# onnxruntime does not show a session's weights and the onnx package costs a second to import
# (and its protobuf would block MindSpore later), so the few fields that hold weights are read
# from the protobuf wire format directly: ModelProto.graph (7) -> GraphProto.initializer (5) and
# node (1) -> NodeProto.attribute (5) -> AttributeProto.t (5), .tensors (10), .g (6), .graphs (11).
_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}   # TensorProto.DataType
_BFLOAT16 = 16


def _varint(buf, pos):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start, end):
    """(field number, wire type, value or (start, end) of a length-delimited field)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = (pos, pos + length), pos + length
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("truncated")
        yield number, wire, value


def _tensor_finite(buf, start, end):
    """(name, finite?) of a TensorProto; non-float tensors are finite."""
    name, dtype, raw, floats, doubles = "", None, None, [], []
    for number, wire, value in _fields(buf, start, end):
        if number == 8 and wire == 2:
            name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
        elif number == 2 and wire == 0:
            dtype = value
        elif number == 9 and wire == 2:
            raw = value
        elif number == 4 and wire == 2:
            floats.append(value)
        elif number == 10 and wire == 2:
            doubles.append(value)
    if dtype not in _FLOAT_TYPES and dtype != _BFLOAT16:
        return name, True
    parts = []
    if raw is not None:
        kind = np.uint16 if dtype == _BFLOAT16 else _FLOAT_TYPES[dtype]
        data = np.frombuffer(buf, kind, (raw[1] - raw[0]) // np.dtype(kind).itemsize, raw[0])
        if dtype == _BFLOAT16:   # exponent all ones: Inf or NaN
            return name, not bool(((data & 0x7F80) == 0x7F80).any())
        parts.append(data)
    parts += [np.frombuffer(buf, np.float32, (b - a) // 4, a) for a, b in floats]
    parts += [np.frombuffer(buf, np.float64, (b - a) // 8, a) for a, b in doubles]
    return name, all(_all_finite(p) for p in parts)


def _all_finite(values):
    # One pass without a mask: NaN and Inf survive a sum, so a finite sum proves every value
    # finite; only a sum that overflowed needs the element-wise look.
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(values.sum())) or bool(np.isfinite(values).all())


def _graph_non_finite(buf, start, end):
    for number, wire, value in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == 5:   # initializer
            name, finite = _tensor_finite(buf, *value)
            if not finite:
                return name
        elif number == 1:   # node
            for n_number, n_wire, n_value in _fields(buf, *value):
                if n_number != 5 or n_wire != 2:
                    continue
                for a_number, a_wire, a_value in _fields(buf, *n_value):
                    if a_wire != 2:
                        continue
                    found = None
                    if a_number in (5, 10):
                        name, finite = _tensor_finite(buf, *a_value)
                        found = None if finite else (name or "a Constant")
                    elif a_number in (6, 11):
                        found = _graph_non_finite(buf, *a_value)
                    if found:
                        return found
    return None


def non_finite_tensor(path):
    """The name of the first weight of an ONNX file holding NaN or Inf, or None when all are finite.

    Raises ValueError when the file is not a readable protobuf.
    """
    with open(path, "rb") as f:
        if not f.seek(0, 2):
            raise ValueError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                for number, wire, value in _fields(buf, 0, len(buf)):
                    if number == 7 and wire == 2:
                        return _graph_non_finite(buf, *value)
                return None
            except IndexError:
                raise ValueError("truncated") from None
            finally:
                buf.release()


def check_outputs(logits, manifest, where):
    """Refuse logits that are not (batch, columns, num_class) finite values: the model does not
    compute what its description says."""
    if logits.ndim != 3 or logits.shape[-1] != manifest.num_class:
        raise CnnctcError(f"{where}: the model's output has shape {tuple(logits.shape)}, but its description "
                          f"(alphabet of {len(manifest.alphabet)} symbols and a blank) needs (batch, columns, "
                          f"{manifest.num_class}); it is not the model it claims to be; export it again")
    if not np.isfinite(logits).all():
        raise CnnctcError(f"{where}: the model computes NaN or infinite scores; its weights are damaged")


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
        if threads is not None:
            threads = positive_int(threads, "threads", upper=1024)
        options = ort.SessionOptions()
        options.log_severity_level = 3   # onnxruntime's warnings are for developers
        if threads:
            options.intra_op_num_threads = threads
        from ._native import quiet_native_stderr
        try:
            with quiet_native_stderr():
                self.session = ort.InferenceSession(str(path), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable and invalid models
            raise CnnctcError(f"{path}: not a readable ONNX model ({_one_line(exc)})") from None
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.manifest = read_manifest(self.metadata, path)
        except NoCnnctcMetadata as exc:
            exc.description = self._foreign_description()
            raise
        try:
            damaged = non_finite_tensor(path)
        except (OSError, ValueError) as exc:
            raise CnnctcError(f"{path}: not a readable ONNX model ({_one_line(exc)})") from None
        if damaged is not None:
            raise CnnctcError(f"{path}: the weight {damaged!r} holds NaN or infinite values; the file is damaged, "
                              "export it again")
        self._check_graph()
        global _announced
        if not _announced:
            log.info("onnxruntime %s on CPU", ort.__version__)
            _announced = True

    def _foreign_description(self):
        """What can be said of another exporter's ONNX file: its producer, input and output."""
        meta = self.session.get_modelmeta()
        producer = " ".join(str(meta.producer_name or "").split())[:80]

        def tensor(node):
            return f"{node.name!r} {node.type} {list(node.shape)}"

        inputs = ", ".join(tensor(node) for node in self.session.get_inputs()[:4])
        outputs = ", ".join(tensor(node) for node in self.session.get_outputs()[:4])
        return (f"no cnnctc metadata: made by {producer or 'another tool'}, input {inputs or 'none'}, output "
                f"{outputs or 'none'}; cnnctc reads only its own exports (cnnctc export --format onnx)")

    def _check_graph(self):
        """The graph's input and output must be what its own metadata describes."""
        path, manifest = self.path, self.manifest
        pre = manifest.preprocess
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        expected = f"(batch, 3, {pre.height}, {pre.max_width}) float32"
        if len(inputs) != 1 or len(outputs) < 1:
            raise CnnctcError(f"{path}: expected one {expected} input and a logits output, got "
                              f"{len(inputs)} inputs and {len(outputs)} outputs; it is not a cnnctc export")
        shape = inputs[0].shape
        if inputs[0].type != "tensor(float)" or len(shape) != 4 or any(
                isinstance(got, int) and got != want for got, want in zip(shape[1:], (3, pre.height, pre.max_width))):
            raise CnnctcError(f"{path}: its input is {inputs[0].type} {list(shape)}, but its metadata describes "
                              f"{expected} images; it is not the model it claims to be")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        batch = shape[0]
        self.batch_size = batch if isinstance(batch, int) and batch > 0 else None
        out_shape = outputs[0].shape
        if outputs[0].type != "tensor(float)":
            raise CnnctcError(f"{path}: its output is {outputs[0].type}, not float32 logits; it is not a cnnctc export")
        if isinstance(out_shape, list) and len(out_shape) == 3 and isinstance(out_shape[-1], int):
            declared = [d if isinstance(d, int) else 1 for d in out_shape]
            check_outputs(np.zeros(declared, np.float32), manifest, path)   # the declared shape, not run
        elif isinstance(out_shape, list) and out_shape and len(out_shape) != 3:
            check_outputs(np.zeros([d if isinstance(d, int) else 1 for d in out_shape], np.float32), manifest, path)
        else:   # the graph does not declare its output's shape: run it once on a blank image
            check_outputs(self(np.zeros((1, 3, pre.height, pre.max_width), np.float32)), manifest, path)

    def __call__(self, batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return run_in_batches(self._run, batch, self.batch_size)

    def _run(self, batch):
        return self.session.run([self.output_name], {self.input_name: batch})[0].astype(np.float32, copy=False)
