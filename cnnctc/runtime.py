"""Which runtime reads a checkpoint, and the ONNX export of a checkpoint kept in the cache.

``runtime="auto"`` (the default of :class:`~cnnctc.recognizer.Recognizer`, ``predict`` and
``eval``) runs a ``.ckpt`` or a hub uid on onnxruntime when the machine is CPU-only and the
``onnx`` extra is installed, and on MindSpore otherwise. CPU-only is decided without importing
MindSpore: ``device_target="CPU"`` says so; ``"GPU"``/``"Ascend"`` say not; without one, a
machine is CPU-only when it has no NVIDIA device (``/dev/nvidia<N>``) and no Ascend device
(``/dev/davinci<N>``).

The ONNX file of a checkpoint is exported once (checked against MindSpore as ``cnnctc export``
does) into the cache: beside the hub asset for a uid, under ``<cache>/cnnctc-onnx/`` for a
user's ``.ckpt``; its name is the checkpoint's SHA-256 and a short hash of what else shapes the
export (the manifest, network options, the export and network code). A later run finds it
without importing MindSpore: the hub asset's SHA-256 comes from its verified-file stamp, a
user's checkpoint's from a stamp in ``<cache>/cnnctc-onnx/sources/`` that holds the file's size,
mtime, ctime and inode; any change to the checkpoint changes those, so it is hashed again and
a file exported from other bytes is never used. The export's own SHA-256 as written is kept in a
stamp beside it (``<file>.verified``, with the file's identity): a cached export changed since
(its weights edited, its metadata kept) is hashed again, found to differ and exported again,
never read. Concurrent first runs wait on one lock and export once. int8 is never chosen here:
it changes readings (``cnnctc quantize`` is explicit).
"""
import contextlib
import glob
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

from ._checks import device_name
from .errors import CnnctcError

__all__ = ["RUNTIMES", "check_runtime", "prefers_onnxruntime", "cpu_only", "cached_onnx", "export_cache_dir"]

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "mindspore", "onnxruntime")
_CACHE_FOLDER = "cnnctc-onnx"
_SHAPING_CODE = ("export.py", "network.py")   # a change to either makes earlier exports stale


def check_runtime(runtime):
    """``runtime`` as one of RUNTIMES, or a one-line error."""
    if not isinstance(runtime, str) or runtime.lower() not in RUNTIMES:
        raise CnnctcError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime.lower()


def cpu_only(device_target=None):
    """True when the model will run on the CPU, decided without importing MindSpore (module docstring)."""
    if device_target:
        return device_name(device_target) == "CPU"
    return not (glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/davinci[0-9]*"))


def onnx_extra_installed(*, export=True):
    """onnxruntime (and, to export, onnx) can be imported; nothing is imported to find out."""
    names = ("onnxruntime", "onnx") if export else ("onnxruntime",)
    return all(importlib.util.find_spec(name) is not None for name in names)


def prefers_onnxruntime(device_target=None):
    """What ``auto`` chooses for a checkpoint: onnxruntime on a CPU-only machine that has it."""
    return cpu_only(device_target) and onnx_extra_installed(export=False)


def export_cache_dir(cache_dir=None):
    from .manifest import cache_root
    return cache_root(cache_dir) / _CACHE_FOLDER


# --- the checkpoint's SHA-256, from a stamp ----------------------------------------------------

def _source_stamp(path, cache_dir):
    key = hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return export_cache_dir(cache_dir) / "sources" / f"{key}.json"


def checkpoint_sha256(path, cache_dir=None):
    """SHA-256 of a user's checkpoint, hashed again only when the file changed since its stamp."""
    from .download import cache
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CnnctcError(f"{path}: no such file") from None
    except OSError as exc:
        raise CnnctcError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    stamp_path = _source_stamp(path, cache_dir)
    identity = dict(cache.identity(st), path=os.path.abspath(path))
    with contextlib.suppress(OSError, ValueError):
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        if isinstance(stamp, dict) and {k: stamp.get(k) for k in identity} == identity and stamp.get("sha256"):
            return stamp["sha256"]
    sha256 = cache.sha256_file(path)
    with contextlib.suppress(OSError):
        if os.stat(path).st_mtime_ns == st.st_mtime_ns:   # not written to while it was read
            stamp_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = stamp_path.with_name(f".{stamp_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dict(identity, sha256=sha256)), encoding="utf-8")
            os.replace(tmp, stamp_path)
    return sha256


# --- the cached export -------------------------------------------------------------------------

def _settings_key(manifest, network_kwargs):
    """A short hash of what, besides the weights, decides the exported file."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    digest.update(json.dumps({"manifest": manifest.to_dict(), "network": network_kwargs}, sort_keys=True,
                             default=str).encode())
    for name in _SHAPING_CODE:
        with contextlib.suppress(OSError):
            digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def _locate(checkpoint, model, manifest, cache_dir, network_kwargs):
    """(where the export goes, the source's SHA-256, the source path) for a checkpoint or a hub uid."""
    from .registry import get_model
    entry = get_model(model, manifest=manifest)
    entry_manifest = entry.manifest
    key = _settings_key(entry_manifest, network_kwargs)
    if checkpoint is None:
        from .download import fetch
        source = fetch(entry_manifest, cache_dir)   # verified (by its stamp when unchanged)
        sha256 = entry_manifest.sha256
        # Beside a cached asset; a bundled model's export goes to the cache, never into the package.
        folder = export_cache_dir(cache_dir) if entry.bundled is not None else source.parent
    else:
        source = Path(checkpoint)
        sha256 = checkpoint_sha256(source, cache_dir)
        folder = export_cache_dir(cache_dir)
    # A checkpoint of the user's may carry its own alphabet, read only when it is exported.
    expected = (entry_manifest.preprocess, entry_manifest.input_shape,
                entry_manifest.alphabet if checkpoint is None else None)
    return folder / f"{sha256}.{key}.onnx", sha256, source, expected


def _stamp_written(path):
    """Record the SHA-256 of the export just written at ``path``, with the file's identity (the stamp
    the download cache writes for a verified asset); a stamp that cannot be written is an error saying why:
    without it the export would never be used, and every run would export again."""
    from ._output import disk_full_error
    from .download import cache
    from .errors import disk_full
    st = os.stat(path)
    stamp = cache.stamp_path(path)
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(dict(cache.identity(st), sha256=cache.sha256_file(path))))
        os.replace(tmp, stamp)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if disk_full(exc):
            raise disk_full_error(stamp) from None
        raise CnnctcError(f"{stamp}: cannot record the export's SHA-256 there ({exc.strerror or exc}); without it "
                          f"the export is never used: make {stamp.parent} writable") from None


def _clear_stamp_place(path):
    """The name of the export's stamp must be free for a file before exporting: an empty folder there (made by
    mistake) is removed; a folder holding anything is the user's, and is said once instead of exporting in vain."""
    from .download import cache
    stamp = cache.stamp_path(path)
    if not stamp.is_dir() or stamp.is_symlink():
        return   # a file or a link there is replaced when the stamp is written
    try:
        stamp.rmdir()
    except OSError:
        raise CnnctcError(f"{stamp}: a folder, where the cached export's stamp (the SHA-256 it was written with) "
                          "goes; without the stamp an export is never used, so none is made: move the folder "
                          "away") from None
    log.info("removed the empty folder %s, where the export's stamp goes", stamp)


def _cache_disk_full(out):
    return CnnctcError(f"{out}: the disk of the ONNX export cache is full (no space left on {out.parent}); nothing "
                       "was written: free some space there, or set CNNCTC_CACHE_DIR to a folder on another disk "
                       "(--runtime mindspore needs no export)")


def _unchanged_since_written(path):
    """Whether the cached export at ``path`` holds the bytes it was written with (by its stamp; the
    file is hashed again only when its size, mtime, ctime or inode moved); None without a stamp
    (an earlier cnnctc's export, or one whose stamp another process is about to write)."""
    from .download import cache
    stamp = cache.read_stamp(path)
    if not stamp or not stamp.get("sha256"):
        return None
    st = os.stat(path)
    if {k: stamp.get(k) for k in cache.identity(st)} == cache.identity(st):
        return True
    if cache.sha256_file(path) != stamp["sha256"]:
        return False
    with contextlib.suppress(OSError):   # the same bytes (copied, touched): the stamp follows the file
        if os.stat(path).st_mtime_ns == st.st_mtime_ns:
            cache.write_stamp(path, stamp["sha256"], st)
    return True


def _usable(path, sha256, expected, *, say=True):
    """An OnnxRunner for a cached export from ``sha256`` that reads as ``expected`` (preprocessing,
    input shape, alphabet or None), or None when it is missing or unusable."""
    if not path.is_file():
        return None
    from .onnx_runtime import OnnxRunner, metadata_values
    tell = log.info if say else log.debug
    try:
        unchanged = _unchanged_since_written(path)
        if not unchanged:
            (log.debug if unchanged is None else tell)(
                "the cached export %s %s; exporting again", path,
                "has no stamp of what was written" if unchanged is None else "was changed since it was exported")
            return None
    except (CnnctcError, OSError) as exc:   # e.g. removed meanwhile
        tell("the cached export %s cannot be used (%s); exporting again", path, exc)
        return None
    try:
        runner = OnnxRunner(path)
    except CnnctcError as exc:
        tell("the cached export %s cannot be used (%s); exporting again", path, exc)
        return None
    if metadata_values(runner.metadata).get("source_sha256") != sha256:
        tell("the cached export %s comes from other weights; exporting again", path)
        return None
    got, (preprocess, input_shape, alphabet) = runner.manifest, expected
    if (got.preprocess, got.input_shape) != (preprocess, input_shape) or (
            alphabet is not None and got.alphabet != alphabet):
        tell("the cached export %s reads its weights otherwise than they are described; exporting again", path)
        return None
    return runner


def cached_onnx(checkpoint=None, *, model=None, manifest=None, device_target=None, cache_dir=None,
                network_kwargs=None):
    """An OnnxRunner for the checkpoint (or hub uid), exporting it into the cache the first time.

    A cached export is found without importing MindSpore; exporting needs MindSpore and the
    ``onnx`` extra. Raises CnnctcError when it cannot be had.
    """
    network_kwargs = dict(network_kwargs or {})
    out, sha256, source, expected = _locate(checkpoint, model, manifest, cache_dir, network_kwargs)
    runner = _usable(out, sha256, expected)
    if runner is not None:
        return runner
    if not onnx_extra_installed():
        raise CnnctcError("exporting to ONNX needs the onnx package; pip install 'cnnctc[onnx]'")
    from ._output import DiskFullError
    try:
        runner = _export_into_cache(out, sha256, source, expected, checkpoint=checkpoint, model=model,
                                    manifest=manifest, device_target=device_target, network_kwargs=network_kwargs)
    except DiskFullError:   # it said "--out", which the cache has not: its folder is what to move
        raise _cache_disk_full(out) from None
    if runner is None:
        raise CnnctcError(f"{out}: the export just written cannot be used")
    return runner


def _export_into_cache(out, sha256, source, expected, *, checkpoint, model, manifest, device_target, network_kwargs):
    from ._output import disk_full_error, output_lock
    from .errors import disk_full
    from .export import export_locked
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if disk_full(exc):
            raise disk_full_error(out) from None
        raise CnnctcError(f"cannot write the ONNX export to {out.parent}: {exc.strerror or exc}") from None
    with output_lock(out, wait=True, what="exporting"):
        runner = _usable(out, sha256, expected, say=False)   # another process exported it while this one waited
        if runner is not None:
            return runner
        _clear_stamp_place(out)
        from ._mindspore import require_mindspore
        require_mindspore()   # a MindSpore that cannot be imported here is said before anything else
        from ._mindspore import mode_kept
        log.info("exporting %s to ONNX once, for onnxruntime: %s", source.name, out)
        with mode_kept():   # the export compiles in graph mode; the caller's process keeps its own mode
            export_locked(out, fmt="onnx", checkpoint=checkpoint, model=model, manifest=manifest, batch_size=None,
                          device_target=device_target, overwrite=True, network_kwargs=network_kwargs)
        try:
            _stamp_written(out)
        except OSError as exc:   # the export, read to hash it, vanished or cannot be read
            raise CnnctcError(f"{out}: cannot record the export's SHA-256 beside it: {exc.strerror or exc}") from None
        return _usable(out, sha256, expected)
