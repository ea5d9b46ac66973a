"""Static int8 quantization of an exported ONNX model, calibrated on the user's own images.

onnxruntime's quantizer writes QDQ models: int8 weights (per output channel by default) and
uint8 activations whose ranges are measured on calibration images, preprocessed exactly as the
model's metadata says. The int8 file keeps the float file's metadata, so it is a model like any
other (``Recognizer("model.int8.onnx")``, ``cnnctc eval``). The report gives the per-column
argmax agreement with the float model on the calibration images; ``cnnctc eval`` on labelled
data measures the accuracy cost.

No MindSpore here. The quantizer needs ``onnx``, whose protobuf would stop a later MindSpore
import in the same process (SPEC section 9); unless protobuf is already loaded, it is loaded
in its pure-Python form, the one MindSpore needs, so a .ckpt can still be loaded afterwards.
"""
import dataclasses
import glob
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ._checks import MAX_CALIBRATION_IMAGES, positive_int
from ._output import (file_mode, full_disk_named, output_lock, put_in_place, refuse_existing, refuse_inputs,
                      work_folder)
from .errors import CnnctcError
from .manifest import expand_user

__all__ = ["quantize_model", "QuantizeReport", "calibration_images"]

log = logging.getLogger(__name__)

_INSTALL = "pip install 'cnnctc[onnx]'"
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
_SHOWN_SKIPS = 5
# The head stays float: it costs nothing, and with small weights and a larger bias the quantizer
# inflates its weight scales until the weights round to zero.
_FLOAT_OPS = ("Gemm", "MatMul")


@dataclasses.dataclass
class QuantizeReport:
    """What :func:`quantize_model` did and how closely the int8 model follows the float one."""
    out: Path
    images: int               # calibration images used
    skipped: int              # calibration inputs that could not be read
    columns: int              # per-column argmaxes compared
    agreement: float          # fraction of those columns whose argmax is unchanged
    same_text: float          # fraction of calibration images read as the same text
    per_channel: bool
    float_bytes: int
    int8_bytes: int

    def __str__(self):
        weights = "per-channel" if self.per_channel else "per-tensor"
        skipped = f" ({self.skipped} unreadable skipped)" if self.skipped else ""
        return (f"{self.out}: int8 QDQ ({weights} 7-bit-range int8 weights, uint8 activations), calibrated on {self.images} "
                f"images{skipped}; {self.float_bytes / 1e6:.1f} MB -> {self.int8_bytes / 1e6:.1f} MB\n"
                f"agreement with the float model on the calibration images: {100 * self.agreement:.2f}% of "
                f"{self.columns} per-column argmaxes, same text for {100 * self.same_text:.2f}% of the images")


def _import_quantizer():
    """onnx and onnxruntime's quantizer, loaded so that MindSpore can still be imported later."""
    if "google.protobuf.internal.api_implementation" not in sys.modules:
        # MindSpore's generated protobuf modules need the pure-Python implementation and select it
        # when imported, too late once onnx loaded the native one: choose it first.
        os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    try:
        import onnx
        from onnxruntime import quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise CnnctcError(f"quantization needs onnx and onnxruntime ({exc}); {_INSTALL}") from None
    return onnx, quantization, quant_pre_process


class _AnyLabel:
    """A label filter that keeps every record: calibration needs images, not labels."""
    alphabet = ""
    max_length = 0

    @staticmethod
    def apply(label):
        return label, None


def _is_lmdb(path):
    path = Path(path)
    if path.is_dir():
        return (path / "data.mdb").is_file()
    return path.is_file() and path.suffix.lower() in (".mdb", ".lmdb")


def calibration_images(paths, preprocess, *, max_images=256, reasons=None):
    """Preprocessed images from files, folders (recursively), globs and LMDBs: (array, skipped).

    At most ``max_images``, spread evenly over everything found; an input that cannot be read
    (or a dataset that cannot be opened) is skipped and counted, never fatal (why, in ``reasons``
    when a list is given).
    """
    from .data import LmdbDataset
    from .transforms import ImageError, find_images, load_image, preprocess_image
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    skipped = 0
    datasets, candidates = [], []   # candidates: a path, or (dataset, index)

    def skip(reason):
        nonlocal skipped
        skipped += 1
        if reasons is not None:
            reasons.append(str(reason))
        if skipped <= _SHOWN_SKIPS:
            log.warning("calibration: skipping %s", reason)

    try:
        for path in paths:
            if _is_lmdb(path):
                try:
                    dataset = LmdbDataset(path, _AnyLabel(), preprocess_config=preprocess)
                except CnnctcError as exc:
                    skip(exc)
                    continue
                datasets.append(dataset)
                candidates += [(dataset, index) for index in range(len(dataset))]
            else:
                candidates += find_images([path], recursive=True)
        if len(candidates) > max_images:
            picks = np.unique(np.linspace(0, len(candidates) - 1, max_images).round().astype(int))
            candidates = [candidates[i] for i in picks]
        arrays = []
        for candidate in candidates:
            try:
                if isinstance(candidate, tuple):
                    arrays.append(candidate[0].load(candidate[1])[0])
                else:
                    arrays.append(preprocess_image(load_image(candidate), preprocess))
            except ImageError as exc:
                skip(exc)
    finally:
        for dataset in datasets:
            dataset.close()
    if skipped > _SHOWN_SKIPS:
        log.warning("calibration: %d inputs skipped in all", skipped)
    if not arrays:
        return np.zeros((0, 3, preprocess.height, preprocess.max_width), np.float32), skipped
    return np.stack(arrays), skipped


def _check_out(out, overwrite):
    out = expand_user(out, "--out")
    if out.suffix.lower() != ".onnx":
        raise CnnctcError(f"--out {out}: the int8 model must end with .onnx (predict and eval choose the runtime "
                          "by the suffix)")
    if out.is_dir():
        raise CnnctcError(f"--out {out}: a folder; name the file to write")
    refuse_existing(out, overwrite)
    if not out.parent.is_dir():
        raise CnnctcError(f"{out.parent}: no such folder")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise CnnctcError(f"{out.parent}: permission denied (cannot write there)")
    return out


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


class _QuietQuantizer:
    """Silence onnxruntime's quantizer, which logs per-tensor notes on the root logger."""

    def __enter__(self):
        import warnings
        self._root = logging.getLogger()
        self._level = self._root.level
        self._root.setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        self._root.setLevel(self._level)


def _in_chunks(runner, images, size):
    return np.concatenate([runner(images[i:i + size]) for i in range(0, len(images), size)])


def _agreement(float_logits, int8_logits, alphabet):
    from .decoding import ctc_greedy_decode
    same_columns = float_logits.argmax(-1) == int8_logits.argmax(-1)
    texts = zip(ctc_greedy_decode(float_logits, alphabet), ctc_greedy_decode(int8_logits, alphabet))
    same_text = np.mean([a.text == b.text for a, b in texts])
    return float(same_columns.mean()), same_columns.size, float(same_text)


def quantize_model(model_onnx, calib, out, *, max_images=256, per_channel=True, overwrite=False, batch_size=16):
    """Write a static int8 (QDQ) copy of the exported float ONNX model ``model_onnx`` to ``out``.

    ``calib``: image files, folders, globs or LMDBs whose images calibrate the activation ranges
    (at most ``max_images``, spread over all of them; unreadable ones are skipped and counted).
    Weights are int8 per output channel (``per_channel=False``: one scale per tensor),
    activations uint8. Returns a :class:`QuantizeReport` with the per-column argmax agreement
    with the float model on the calibration images.
    """
    max_images = positive_int(max_images, "max_images", upper=MAX_CALIBRATION_IMAGES)
    batch_size = positive_int(batch_size, "batch_size", upper=4096)
    model_onnx = Path(model_onnx)
    calib = [calib] if isinstance(calib, (str, os.PathLike)) else list(calib)
    for path in calib:   # a typo would only calibrate on less; an unreadable file is skipped and counted
        if any(c in str(path) for c in "*?["):
            if not glob.glob(str(path)) and not os.path.lexists(path):
                raise CnnctcError(f"--calib {path}: the pattern matches no file")
        elif not os.path.lexists(path):
            raise CnnctcError(f"--calib {path}: no such file or folder")
    refuse_inputs(out, [model_onnx, *calib])   # before the existing-file check: that is not the problem
    out = _check_out(out, overwrite)
    with output_lock(out, what="writing"):
        return _quantize(model_onnx, calib, out, max_images=max_images, per_channel=per_channel,
                         overwrite=overwrite, batch_size=batch_size)


def _quantize(model_onnx, calib, out, *, max_images, per_channel, overwrite, batch_size):
    from .onnx_runtime import OnnxRunner
    onnx, quantization, quant_pre_process = _import_quantizer()
    float_runner = OnnxRunner(model_onnx)
    manifest = float_runner.manifest
    model = onnx.load(str(model_onnx), load_external_data=False)
    if any(node.op_type in _QUANTIZED_OPS for node in model.graph.node):
        raise CnnctcError(f"{model_onnx}: already quantized; quantize the float model that "
                          "'cnnctc export --format onnx' wrote")
    input_name = model.graph.input[0].name
    del model

    reasons = []
    images, skipped = calibration_images(calib, manifest.preprocess, max_images=max_images, reasons=reasons)
    if not len(images):
        unread = f" ({skipped} inputs could not be read; the first: {reasons[0]})" if skipped else ""
        raise CnnctcError(f"no readable calibration images in {', '.join(map(str, calib))}{unread}; give --calib "
                          "image files, folders or LMDBs like those the model will read")
    log.info("calibrating on %d images%s", len(images), f" ({skipped} unreadable skipped)" if skipped else "")

    chunk = float_runner.batch_size or batch_size   # a fixed-batch file takes only its own batch size
    batches = [images[i:i + chunk] for i in range(0, len(images), chunk)]
    if len(batches[-1]) < chunk and float_runner.batch_size is not None:
        batches[-1] = np.concatenate([batches[-1], np.repeat(batches[-1][-1:], chunk - len(batches[-1]), axis=0)])

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    work = work_folder(out)
    try:
        with full_disk_named(out, work):
            return _write(work, out, onnx, quantization, quant_pre_process, model_onnx, float_runner, Reader,
                          images, skipped, chunk, per_channel, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write(work, out, onnx, quantization, quant_pre_process, model_onnx, float_runner, Reader, images, skipped,
           chunk, per_channel, overwrite):
    from .onnx_runtime import OnnxRunner
    manifest = float_runner.manifest
    prepared, quantized, final = work / "prepared.onnx", work / "quantized.onnx", work / "final.onnx"
    try:
        with _QuietQuantizer():
            # Folds BatchNormalization into Conv (the quantizer would otherwise try to quantize
            # its 1-D parameters per channel) and records shapes.
            quant_pre_process(str(model_onnx), str(prepared), skip_symbolic_shape=True)
            prepared_model = onnx.load(str(prepared), load_external_data=False)
            exclude = [n.name for n in prepared_model.graph.node if n.op_type in _FLOAT_OPS]
            del prepared_model
            quantization.quantize_static(
                str(prepared), str(quantized), Reader(), quant_format=quantization.QuantFormat.QDQ,
                per_channel=per_channel, activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8, nodes_to_exclude=exclude,
                # 7-bit weights: x86 CPUs without VNNI (AVX2) add uint8 x int8 products in int16
                # pairs, which saturate with full-range weights (same text for 4% of the images
                # instead of 100% on the bundled model); with VNNI it costs a bit of precision.
                reduce_range=True,
                calibrate_method=quantization.CalibrationMethod.MinMax)
    except (KeyboardInterrupt, CnnctcError):
        raise
    except Exception as exc:  # the quantizer raises many types; report it on one line
        raise CnnctcError(f"onnxruntime's quantizer failed on {model_onnx}: {_one_line(exc)}") from None
    result = onnx.load(str(quantized))
    del result.metadata_props[:]
    for key, value in {**float_runner.metadata,
                       "quantization": f"static int8 QDQ, {'per-channel' if per_channel else 'per-tensor'} "
                                       f"int8 weights (7-bit range), uint8 activations, MinMax ranges from {len(images)} "
                                       "calibration images",
                       "float_model": model_onnx.name}.items():
        entry = result.metadata_props.add()
        entry.key, entry.value = key, value if key in float_runner.metadata else json.dumps(value)
    result.doc_string = model_onnx.name + " quantized to int8 by cnnctc. " + result.doc_string
    onnx.save(result, str(final))
    del result

    int8_runner = OnnxRunner(final)
    agreement, columns, same_text = _agreement(_in_chunks(float_runner, images, chunk),
                                               _in_chunks(int8_runner, images, chunk), manifest.alphabet)
    del int8_runner
    os.chmod(final, file_mode())
    put_in_place(final, out, overwrite)
    return QuantizeReport(out=out, images=len(images), skipped=skipped, columns=columns, agreement=agreement,
                          same_text=same_text, per_channel=per_channel, float_bytes=model_onnx.stat().st_size,
                          int8_bytes=out.stat().st_size)
