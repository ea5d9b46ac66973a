"""Export a model to ONNX, MindIR or AIR files that describe themselves, and run MindIR files.

An exported file carries what is needed to read images with it: the alphabet (the blank is the
last class), the preprocessing constants, the source model's uid and the checkpoint's SHA-256,
and the whole manifest as JSON. ONNX files hold them as metadata properties; MindIR and AIR
files have them in a JSON file beside them (``model.mindir.json``).

ONNX files are rewritten after MindSpore's exporter (which writes opset 11 with a fixed batch):
opset 13 (per-channel int8 needs it), a symbolic batch axis unless a batch size is asked for,
input ``images`` and output ``logits``. Every file is written under a temporary name and
renamed into place (see ``_output``): a second export to the same file is refused while the
first runs, a file that appeared meanwhile is never replaced without ``overwrite``, the input
checkpoint is never an output, and nothing is left behind on an error, Ctrl-C or ``kill -9``
(the next export to that file removes what a killed one left).
"""
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ._checks import positive_int
from ._native import quiet_native_stderr
from ._signals import graph_call
from ._output import (file_mode, full_disk_named, output_lock, put_in_place, refuse_existing, refuse_inputs,
                      work_folder)
from .errors import CnnctcError, shown
from .manifest import expand_user
from .model_files import MANIFEST_KEY, foreign_sidecar, read_sidecar, sidecar_path
from .onnx_runtime import check_outputs, run_in_batches

__all__ = ["export_model", "MindIRRunner", "read_sidecar", "sidecar_path", "FORMATS", "MANIFEST_KEY"]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "mindir", "air")
_SUFFIX = {"onnx": ".onnx", "mindir": ".mindir", "air": ".air"}
_MINDSPORE_FORMAT = {"onnx": "ONNX", "mindir": "MINDIR", "air": "AIR"}
ONNX_OPSET = 13
INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "images", "logits", "batch"
# A dynamic-batch ONNX file is traced at this batch: a size no other axis has, so that an axis
# equal to it is the batch axis and a Reshape that baked it in can be told apart.
_TRACE_BATCH = 3
_MAX_RELATIVE_ERROR = 1e-4


def _check_out(out, fmt, overwrite):
    out = expand_user(out, "--out")
    suffix = _SUFFIX[fmt]
    if out.suffix.lower() != suffix:
        raise CnnctcError(f"--out {out}: with --format {fmt} the file name must end with {suffix} "
                          "(predict and eval choose the runtime by the suffix)")
    if out.is_dir():
        raise CnnctcError(f"--out {out}: a folder; name the file to write")
    refuse_existing(out, overwrite)
    if fmt != "onnx":   # the description beside the model obeys --overwrite too
        if sidecar_path(out).is_dir():
            raise CnnctcError(f"{sidecar_path(out)}: a folder where the model's description would go; move it")
        refuse_existing(sidecar_path(out), overwrite)
    if not out.parent.is_dir():
        raise CnnctcError(f"{out.parent}: no such folder")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise CnnctcError(f"{out.parent}: permission denied (cannot write there)")
    return out


def _refuse_foreign_sidecar(out, overwrite):
    """--overwrite replaces the description beside a MindIR/AIR file only when export wrote it: a
    file of another kind at that name (the user's notes.mindir.json) is never lost."""
    side = sidecar_path(out)
    why = foreign_sidecar(side) if overwrite else None
    if why:
        raise CnnctcError(f"{side} is not a description cnnctc export wrote ({why}); --overwrite replaces "
                          f"{out.name} and only its own description beside it: move {side.name} away, or choose "
                          "another --out")


def export_metadata(manifest, *, fmt, batch_size, source_sha256, source_name, lineage=None):
    """The description an exported file carries (JSON-able values): how to read it and its lineage.

    ``manifest`` read the checkpoint. Its uid, URL, hash and card claims (accuracy, training set)
    stay only when the exported weights are that manifest's asset (same SHA-256) and were not
    fine-tuned; otherwise the file carries its own manifest (:func:`cnnctc.lineage.own_manifest`)
    and its ``lineage`` (the checkpoint's, default unknown) says where the weights came from.
    """
    from .lineage import LINEAGE_KEY, UNKNOWN, cnnctc_version, export_lineage, model_lineage, own_manifest
    from .registry import list_models
    if source_sha256 != manifest.sha256:  # a copy of a registered model's own file is that model
        manifest = next((e.manifest for e in list_models() if e.manifest.sha256 == source_sha256), manifest)
    is_asset = source_sha256 == manifest.sha256
    if lineage is None or lineage.get("origin") == "unknown":   # why it is unknown (damaged, ...) is kept
        lineage = model_lineage(manifest) if is_asset else dict(lineage or UNKNOWN)
    if not is_asset:
        manifest = own_manifest(manifest, file_name=source_name, sha256=source_sha256)
    elif lineage.get("origin") == "finetune":  # a user's manifest for a fine-tuned file: no copied card claims
        manifest = manifest.replace(accuracy=None, train_dataset="")
    pre = manifest.preprocess
    return {
        "alphabet": manifest.alphabet,
        "blank_index": manifest.blank_index,
        "num_class": manifest.num_class,
        "input_layout": "NCHW RGB float32",
        "height": pre.height,
        "max_width": pre.max_width,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "resample": pre.resample,
        "pad": pre.pad,
        "color": pre.color,
        "batch_size": batch_size,
        "source_uid": manifest.uid,
        "source_sha256": source_sha256,
        "source_checkpoint": source_name,
        "format": fmt,
        "exported_by": f"cnnctc {cnnctc_version()}",
        MANIFEST_KEY: manifest.to_dict(),
        LINEAGE_KEY: export_lineage(lineage, fmt=fmt, file_name=source_name, sha256=source_sha256),
    }


def _describe_onnx(model, metadata):
    """Put ``metadata`` in an ONNX model: every value as JSON, cnnctc as the producer, a doc string."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value, ensure_ascii=False)
    from .lineage import cnnctc_version
    version = cnnctc_version()
    model.producer_name, model.producer_version = "cnnctc", version
    model.doc_string = (f"CNN-CTC text recognizer exported by cnnctc {version} from {metadata['source_checkpoint']} "
                        f"(sha256 {metadata['source_sha256']}): {INPUT_NAME} (batch, 3, {metadata['height']}, "
                        f"{metadata['max_width']}) float32, preprocessed as the metadata says -> {OUTPUT_NAME} "
                        "(batch, columns, classes), the CTC blank is the last class")


def _relative_error(actual, expected):
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(actual - expected).max()) / scale


# ONNX --------------------------------------------------------------------------------------

def _import_onnx():
    # MindSpore first (SPEC section 9): its protobuf modules load only under the pure-Python
    # implementation, which it selects at import; onnx loaded first would pin the native one.
    from ._mindspore import require_mindspore
    require_mindspore()
    try:
        import onnx
        import onnx.version_converter
    except ImportError as exc:
        raise CnnctcError(f"ONNX export needs the onnx package ({exc}); pip install 'cnnctc[onnx]'") from None
    return onnx


def _rename_value(graph, old, new):
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new


def _constant_values(graph, onnx, names):
    """The values of the initializers and Constant nodes called ``names``."""
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name in names}
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in names:
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = onnx.numpy_helper.to_array(attribute.t)
    return values


def _make_batch_symbolic(model, onnx, traced_batch):
    """Name the batch axis everywhere; refuse a graph whose Reshapes baked the traced batch in."""
    graph = model.graph
    reshapes = [node for node in graph.node if node.op_type == "Reshape"]
    constants = _constant_values(graph, onnx, {node.input[1] for node in reshapes})
    for node in reshapes:
        shape = constants.get(node.input[1])
        if shape is None or not (-1 in shape.tolist() or (len(shape) and shape[0] == 0)):
            raise CnnctcError(f"the exported graph reshapes to a fixed size ({node.name}: "
                              f"{None if shape is None else shape.tolist()}); export with --batch-size")
    for value in [*graph.input, *graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS
    keep = []
    for value in graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_value == traced_batch:
            dims[0].dim_param = BATCH_AXIS
            keep.append(value)
        elif not len(dims) or dims[0].HasField("dim_param"):
            keep.append(value)
        # other shapes derived from the batch (e.g. batch * columns) are dropped: they are optional
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _finish_onnx(raw, out_tmp, metadata, dynamic, traced_batch):
    """Rewrite MindSpore's ONNX file: opset, names, batch axis, metadata; checked, then saved."""
    onnx = _import_onnx()
    try:
        model = onnx.load(str(raw))
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < ONNX_OPSET:
            model = onnx.version_converter.convert_version(model, ONNX_OPSET)
        model.ir_version = max(model.ir_version, 7)   # IR 7 is the first to know opset 13
    except Exception as exc:  # onnx raises many types; anything here is a converter limitation
        raise CnnctcError(f"cannot convert MindSpore's ONNX file to opset {ONNX_OPSET}: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise CnnctcError(f"expected one input and one output in the exported graph, got "
                          f"{len(graph.input)} and {len(graph.output)}")
    _rename_value(graph, graph.input[0].name, INPUT_NAME)
    _rename_value(graph, graph.output[0].name, OUTPUT_NAME)
    if dynamic:
        _make_batch_symbolic(model, onnx, traced_batch)
    _describe_onnx(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_tmp))


def _check_description(metadata, out, manifest_file):
    """Refuse, before anything is written, a description that a reader of ``out`` would refuse: one that
    contradicts itself or the registry (a manifest naming a registered model's weights with another
    alphabet or preprocessing). The fault is in the manifest the weights were read with, not in a file."""
    from .manifest import Manifest
    from .registry import check_export_description
    named = f"the manifest {manifest_file}" if manifest_file else "the manifest given"
    check_export_description(metadata, Manifest.from_dict(metadata[MANIFEST_KEY], source=out), f"{out}: {named}",
                             subject="the description made from it",
                             ending="nothing was written: correct the manifest (or leave it out)")


def _check_onnx_matches(path, network, batch_shape, out=None):
    """Run the file on onnxruntime and compare with the MindSpore network; returns the error."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.info("onnxruntime is not installed: the exported file was not run")
        return None
    from ._mindspore import mindspore as ms, network_run
    from .onnx_runtime import OnnxRunner
    batch = np.random.default_rng(0).standard_normal(batch_shape).astype(np.float32)
    with network_run(), graph_call():   # it compiles: a Ctrl-C meanwhile is one line, not MindSpore's trace
        expected = network(ms.Tensor(batch)).asnumpy()
    try:
        runner = OnnxRunner(path)
    except CnnctcError as exc:   # its line names the temporary file and says to export again: neither helps here
        reason = re.sub(r"[;,] [^;,]*export it again$", "", str(exc).removeprefix(f"{path}: "))
        raise CnnctcError(f"{out or path}: the file just exported does not read back on onnxruntime ({reason}); "
                          "nothing was written (a bug in cnnctc: report it with the checkpoint's manifest)") from None
    actual = runner(batch)
    error = _relative_error(actual, expected)
    if not error <= _MAX_RELATIVE_ERROR:
        raise CnnctcError(f"the exported ONNX file's logits differ from MindSpore's (relative error {error:.2g}); "
                          "nothing was written")
    return error


# Export ------------------------------------------------------------------------------------

def export_model(out, *, format="onnx", checkpoint=None, model=None, manifest=None, batch_size=None,
                 device_target=None, overwrite=False, **network_kwargs):
    """Write the model as ``format`` ("onnx", "mindir" or "air") to ``out``; returns its path.

    The weights come from ``checkpoint`` or the registry's asset of ``model`` (a hub uid), as in
    :func:`cnnctc.loader.load_model`. ``batch_size`` fixes the batch axis (default: dynamic).
    ONNX files are opset 13 with the manifest in their metadata; MindIR and AIR files get it in
    ``<out>.json`` beside them. AIR needs an Ascend device. An existing ``out`` is refused unless
    ``overwrite``.
    """
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise CnnctcError(f"unknown export format {shown(format)}; use one of {', '.join(FORMATS)}")
    if batch_size is not None:
        batch_size = positive_int(batch_size, "batch_size")
    out = _check_out(out, fmt, overwrite)
    outputs = [out] if fmt == "onnx" else [out, sidecar_path(out)]
    for path in outputs:
        refuse_inputs(path, [checkpoint, _manifest_file(manifest)])
    if fmt != "onnx":   # after the inputs: a description path that is the input says so, not "not ours"
        _refuse_foreign_sidecar(out, overwrite)
    from ._mindspore import mode_kept
    with output_lock(out, what="exporting to"), mode_kept():   # graph mode for the export only
        return export_locked(out, fmt=fmt, checkpoint=checkpoint, model=model, manifest=manifest,
                             batch_size=batch_size, device_target=device_target, overwrite=overwrite,
                             network_kwargs=network_kwargs)


def _manifest_file(manifest):
    """The file a manifest was read from (a path given, CNNCTC_MANIFEST, a Manifest's source), or None."""
    if manifest is None:
        manifest = os.environ.get("CNNCTC_MANIFEST") or None
    source = manifest if isinstance(manifest, (str, os.PathLike)) else getattr(manifest, "source", None)
    return source if source and os.path.isfile(source) else None


def export_locked(out, *, fmt, checkpoint, model, manifest, batch_size, device_target, overwrite,
                  network_kwargs):
    """:func:`export_model` once ``out`` is checked and its lock held (the runtime's cache calls it)."""
    from .loader import load_model, select_device
    if fmt == "air" and select_device(device_target) != "Ascend":
        raise CnnctcError("AIR export needs an Ascend device; use --format mindir or onnx")
    loaded = load_model(checkpoint, model=model, manifest=manifest, device_target=device_target, **network_kwargs)
    if loaded.checkpoint is None:
        raise CnnctcError("nothing to export: the network has no trained weights")
    outputs = [out] if fmt == "onnx" else [out, sidecar_path(out)]
    for path in outputs:   # the registry's asset and the manifest file read are known only now
        refuse_inputs(path, [loaded.checkpoint, _manifest_file(loaded.manifest)])
    if checkpoint is None:
        source_sha256 = loaded.manifest.sha256   # the registry's asset, verified when it was fetched
        lineage = None
    else:
        from .checkpoint import read_lineage
        from .download import sha256_file
        source_sha256 = sha256_file(loaded.checkpoint)
        lineage = read_lineage(loaded.checkpoint, source_sha256)
    metadata = export_metadata(loaded.manifest, fmt=fmt, batch_size=batch_size, source_sha256=source_sha256,
                               source_name=loaded.checkpoint.name, lineage=lineage)
    _check_description(metadata, out, _manifest_file(loaded.manifest) or _manifest_file(manifest))
    pre = loaded.manifest.preprocess
    traced = batch_size or _TRACE_BATCH
    shape = (traced, 3, pre.height, pre.max_width)

    from ._mindspore import mindspore as ms
    # MindSpore's exporter chmods the folder it writes to (0700) and writes read-only files:
    # it writes into a private folder beside ``out``, on the same file system for the rename.
    work = work_folder(out)
    try:
        with full_disk_named(out, work):
            _write(work, out, fmt, ms, loaded, metadata, batch_size, traced, shape, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


# The only characters MindSpore's exporter takes in the file name it is given (its own check).
_EXPORTER_PATH = re.compile(r"[0-9a-zA-Z@_\-.:/\\]+")


@contextlib.contextmanager
def _exporter_folder(work, out):
    """Where MindSpore's exporter writes: ``work`` when its path is one the exporter takes, else a new
    private folder in the system's temporary folder (an --out with a space or a non-ASCII letter)."""
    if _EXPORTER_PATH.fullmatch(str(work)):
        yield work
        return
    _remove_dead_exporter_folders()
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"cnnctc-export-{os.getpid()}-"))
    except OSError as exc:
        raise CnnctcError(f"cannot make a temporary folder for MindSpore's exporter: {exc.strerror or exc}") from None
    try:
        if not _EXPORTER_PATH.fullmatch(str(folder)):
            raise CnnctcError(f"MindSpore's exporter writes only to paths of ASCII letters, digits and -_.@:/; "
                              f"{out} has other characters and so has the temporary folder {folder.parent}: set "
                              "TMPDIR to a folder whose path has none, or choose such an --out")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_dead_exporter_folders():
    """Remove what an export killed with -9 left in the temporary folder (its process is gone)."""
    for folder in Path(tempfile.gettempdir()).glob("cnnctc-export-*-*"):
        pid = folder.name.split("-")[2]
        if not pid.isdigit() or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (PermissionError, OverflowError):
            continue   # another user's process (alive), or no process number at all


def _write(work, out, fmt, ms, loaded, metadata, batch_size, traced, shape, overwrite):
    if fmt == "mindir" and batch_size is None:
        example = ms.Tensor(shape=[None, *shape[1:]], dtype=ms.float32)
    else:
        example = ms.Tensor(np.zeros(shape, np.float32))
    with _exporter_folder(work, out) as folder:
        raw = folder / f"raw{_SUFFIX[fmt]}"
        from ._mindspore import network_run
        try:
            with network_run(), graph_call():
                ms.export(loaded.network, example, file_name=str(raw), file_format=_MINDSPORE_FORMAT[fmt])
        except (RuntimeError, ValueError, TypeError) as exc:   # a full disk is named by full_disk_named
            raise CnnctcError(f"MindSpore cannot export {fmt.upper()} here: {' '.join(str(exc).split())}") from None
        if not raw.is_file():
            raise CnnctcError(f"MindSpore wrote no {fmt.upper()} file (expected {raw.name})")
        if folder != work:   # beside --out, for the rename into place
            raw = Path(shutil.copyfile(raw, work / raw.name))
    if fmt == "onnx":
        final = work / "final.onnx"
        _finish_onnx(raw, final, metadata, batch_size is None, traced)
        error = _check_onnx_matches(final, loaded.network, (2 if batch_size is None else batch_size, *shape[1:]),
                                    out=out)
        if error is not None:
            log.info("onnxruntime reproduces MindSpore's logits (max relative difference %.1e)", error)
        os.chmod(final, file_mode())
        put_in_place(final, out, overwrite)
        return
    side = work / "final.json"
    side.write_text(json.dumps({**metadata, "model_file": out.name}, indent=2, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    os.chmod(raw, file_mode())
    os.chmod(side, file_mode())
    # The description first: a model file never appears without it.
    _refuse_foreign_sidecar(out, overwrite)   # again: a file may have appeared there while the model was exported
    put_in_place(side, sidecar_path(out), overwrite)
    try:
        put_in_place(raw, out, overwrite)
    except BaseException:
        if not overwrite:   # the description placed just now belongs to no model: take it back
            with contextlib.suppress(OSError):
                os.unlink(sidecar_path(out))
        raise


# MindIR runtime ------------------------------------------------------------------------------

class MindIRRunner:
    """A MindIR file exported by cnnctc, run by MindSpore (``mindspore.load`` + ``nn.GraphCell``).

    ``.manifest`` comes from ``<file>.json``; calling it maps (B, 3, H, W) float32 numpy
    batches to (B, T, C) float32 logits for any B, from any thread (the runs take turns).
    """

    def __init__(self, path, *, device_target=None):
        path = Path(path)
        if not path.is_file():
            raise CnnctcError(f"{path}: no such MindIR file")
        self.path = path
        self.manifest, info = read_sidecar(path)
        self.batch_size = info.get("batch_size")
        from ._mindspore import mindspore as ms, mode_kept, release_at_exit
        from .loader import configure_context
        with mode_kept():   # a GraphCell runs as a graph in either mode: the caller's mode stays
            configure_context(device_target)
        try:
            with quiet_native_stderr():   # MindSpore's C++ core prints '[ERROR] CORE(...)' for a damaged file
                graph = ms.load(str(path))
        except (RuntimeError, ValueError, TypeError, OSError) as exc:
            raise CnnctcError(f"{path}: not a loadable MindIR file ({str(exc).splitlines()[0]})") from None
        self.network = ms.nn.GraphCell(graph)
        release_at_exit(self)   # freed at exit while MindSpore's modules are whole (cnnctc._mindspore)
        for name, parameter in self.network.parameters_dict().items():
            if not np.isfinite(parameter.asnumpy()).all():
                raise CnnctcError(f"{path}: the weight {name!r} holds NaN or infinite values; the file is damaged, "
                                  "export it again")
        pre = self.manifest.preprocess
        probe = np.zeros((self.batch_size or 1, 3, pre.height, pre.max_width), np.float32)
        wrong = (f"{path}: does not take the (batch, 3, {pre.height}, {pre.max_width}) images "
                 f"{sidecar_path(path).name} describes")
        try:
            with quiet_native_stderr():
                logits = self(probe)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CnnctcError(f"{wrong} ({str(exc).splitlines()[0]}); it is not the model its description "
                              "claims") from None
        if logits.ndim < 1 or logits.shape[0] != len(probe):   # e.g. a taller image folded into the batch
            raise CnnctcError(f"{wrong} ({len(probe)} images gave {tuple(logits.shape)}); it is not the model its "
                              "description claims")
        check_outputs(logits, self.manifest, path)

    def release(self):
        """Drop the network (at interpreter exit), so that its Cell is freed while Python can free it."""
        self.network = None

    def __call__(self, batch):
        from ._mindspore import mindspore as ms, network_run
        batch = np.ascontiguousarray(batch, dtype=np.float32)

        def run(chunk):
            with network_run():   # one MindSpore run at a time; refused in a forked child
                network = self.network
                if network is None:
                    raise CnnctcError(f"{self.path}: its MindSpore network was released as the interpreter exits; "
                                      "read before exit, or create a new Recognizer")
                return network(ms.Tensor(chunk)).asnumpy().astype(np.float32, copy=False)
        return run_in_batches(run, batch, self.batch_size)
