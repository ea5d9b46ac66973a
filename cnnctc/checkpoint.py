"""Reading, mapping and writing MindSpore checkpoints of CNN-CTC.

Reading a checkpoint is reading a model file's description, so :func:`read_checkpoint` lives in
:mod:`cnnctc.model_files` (below lineage, which checks what a file says); it is named here too.

The hub file carries the network's 162 weights plus the optimizer state of its training run;
loading is strict about the weights, skips the optimizer state and names anything else, and
refuses weights that are not finite or a saved alphabet that cannot be right. Every failure is
a one-line :class:`~cnnctc.errors.CheckpointError`; only regular files are read (a FIFO never
blocks), and a file is only ever written whole (a temporary file renamed into place).
"""
import contextlib
import logging
import os
import stat
from pathlib import Path

import numpy as np

from ._files import rename_no_replace, umask_mode
from ._mindspore import mindspore as ms
from .errors import CheckpointError
from .lineage import file_lineage
from .model_files import (ALPHABET_KEY, LINEAGE_KEY, check_alphabet, checkpoint_entries, error_reason,
                          is_training_state, read_checkpoint, state_facts)

__all__ = ["read_checkpoint", "read_lineage", "split_state", "check_alphabet", "check_weights", "load_weights",
           "save_checkpoint", "slim", "ALPHABET_KEY"]


def read_lineage(path, sha256):
    """The lineage of the checkpoint at ``path`` (whose SHA-256 is ``sha256``): its saved one, checked
    against the file's hash, alphabet and head width, the registry's for a registered asset, else
    ``{"origin": "unknown"}`` (see :mod:`cnnctc.lineage`). Only those entries are read."""
    state = checkpoint_entries(path)
    alphabet, width = state_facts(state)
    return file_lineage(state.get(LINEAGE_KEY), sha256, alphabet=alphabet, width=width)


def split_state(state):
    """Split a checkpoint mapping into (weights, training_state, metadata)."""
    weights, training, meta = {}, {}, {}
    for name, value in state.items():
        if isinstance(value, str):
            meta[name] = value
        elif is_training_state(name):
            training[name] = value
        else:
            weights[name] = value
    return weights, training, meta


def _numpy(value):
    return value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)


def check_weights(state, source="checkpoint", *, skip_prefixes=()):
    """Raise CheckpointError for weights holding NaN or Inf, or a bad saved alphabet.

    ``state`` is a checkpoint mapping; optimizer state and entries under ``skip_prefixes`` (not
    loaded) are not checked. One vectorised pass per tensor.
    """
    if isinstance(state.get(ALPHABET_KEY), str):
        check_alphabet(state[ALPHABET_KEY], source)
    bad = []
    for name, value in state.items():
        if isinstance(value, str) or is_training_state(name) or name.startswith(tuple(skip_prefixes)):
            continue
        try:
            array = _numpy(value)
        except (TypeError, ValueError, RuntimeError):  # a dtype numpy cannot hold: nothing to check here
            continue
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad.append(name)
    if bad:
        count = "1 parameter holds" if len(bad) == 1 else f"{len(bad)} parameters hold"
        raise CheckpointError(f"{source}: {count} NaN/Inf values (e.g. {bad[0]}); the checkpoint is damaged or "
                              "came from a diverged run")


def _as_parameter(name, value, dtype):
    # Tensor(..., dtype=) casts (e.g. float16 values into a float32 network) without the
    # deprecated mindspore.dtype_to_nptype, which logs a warning per call.
    return ms.Parameter(ms.Tensor(_numpy(value), dtype=dtype), name=name)


def load_weights(net, checkpoint, *, skip_prefixes=(), source=None):
    """Load ``checkpoint`` (a path or a mapping) into ``net`` strictly.

    Every parameter of ``net`` whose name does not start with one of ``skip_prefixes`` must be
    present with its shape; float16 values are cast to the parameter's dtype; optimizer state
    is ignored; any other unknown entry is an error naming it. Weights holding NaN/Inf and a
    saved alphabet that is empty or repeats a symbol are refused (:func:`check_weights`).
    Returns the checkpoint's string metadata (e.g. its alphabet).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = source or str(checkpoint)
        checkpoint = read_checkpoint(checkpoint)
    source = source or "checkpoint"
    weights, _, meta = split_state(checkpoint)
    expected = {p.name: p for p in net.get_parameters()}
    loadable = {n: p for n, p in expected.items() if not n.startswith(tuple(skip_prefixes))}
    missing = sorted(set(loadable) - set(weights))
    unexpected = sorted(n for n in set(weights) - set(expected) if not n.startswith(tuple(skip_prefixes)))
    wrong_shape = [f"{n} {tuple(weights[n].shape)} (network wants {tuple(p.shape)})"
                   for n, p in loadable.items() if n in weights and tuple(weights[n].shape) != tuple(p.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_names(missing)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} with another shape: {_names(wrong_shape)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not fit this network ({'; '.join(problems)})")
    check_weights(checkpoint, source, skip_prefixes=skip_prefixes)
    params = {n: _as_parameter(n, weights[n], p.dtype) for n, p in loadable.items()}
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    if not_loaded and set(not_loaded) & set(loadable):
        raise CheckpointError(f"{source}: MindSpore did not load {_names(sorted(not_loaded))}")
    return meta


def _names(items, limit=6):
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _check_destination(path):
    """Raise CheckpointError unless a file can be put at ``path`` (its folder exists; it is no folder)."""
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise CheckpointError(f"cannot write {path}: the folder {parent} {what}")
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a directory; name a file inside it")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"cannot write {path}: it exists and is not a regular file")


class _DropRecords(logging.Filter):
    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def filter(self, record):
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def _without_mindspore_record(prefix):
    """Drop MindSpore's own log record that starts with ``prefix`` (we raise one line instead)."""
    try:
        from mindspore import log as ms_log
        logger = ms_log._get_logger()
    except (ImportError, AttributeError):
        yield
        return
    drop = _DropRecords(prefix)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _file_mode():
    return umask_mode()


def _put_in_place(tmp, path, overwrite):
    """Rename ``tmp`` to ``path``; without ``overwrite`` an existing ``path`` (even one that appeared
    a moment ago) is left alone: a hard link fails if the name exists, atomically."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise CheckpointError(f"cannot write {path}: it already exists (another process wrote it); it was left "
                              "alone") from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(path):
            raise CheckpointError(f"cannot write {path}: it already exists (another process wrote it); it was "
                                  "left alone") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def save_checkpoint(params, path, *, metadata=None, overwrite=True):
    """Write a checkpoint atomically (a temporary file renamed into place); returns ``path``.

    ``params`` is a Cell or a list of {"name", "data"} dicts; ``metadata`` holds string
    (or scalar) entries such as the alphabet. An existing file at ``path`` is replaced only with
    ``overwrite``. The folder must exist. The file gets the mode the umask gives (0644 under
    umask 022; MindSpore's own writer makes it 0400). Any failure (no such folder, no
    permission, no space) is a one-line CheckpointError and leaves no temporary file behind.
    """
    path = Path(path)
    _check_destination(path)
    # MindSpore appends ".ckpt" to names without it, so the temporary name must end with it; it
    # writes "<name>.tmp" first and does not remove that file when the write fails.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.ckpt")
    leftovers = (tmp, tmp.with_suffix(".tmp"))
    try:
        with _without_mindspore_record("Failed to save the checkpoint file"):
            ms.save_checkpoint(params, str(tmp), append_dict=dict(metadata) if metadata else None)
        os.chmod(tmp, _file_mode())
        _put_in_place(tmp, path, overwrite)
    except (KeyboardInterrupt, SystemExit, CheckpointError):
        raise
    except Exception as exc:  # noqa: BLE001  MindSpore raises OSError, RuntimeError, ValueError...
        raise CheckpointError(f"cannot write {path}: {error_reason(exc)}") from None
    finally:
        for leftover in leftovers:
            with contextlib.suppress(OSError):
                if leftover.exists() or leftover.is_symlink():
                    os.chmod(leftover, stat.S_IWUSR | stat.S_IRUSR)  # MindSpore makes them read-only
                    leftover.unlink()
    return path


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def slim(src, dst, *, overwrite=False):
    """Write ``src`` without its optimizer state to ``dst``; returns (entries kept, entries dropped).

    ``src`` is never modified. ``dst`` must not be ``src`` (by name, symbolic link or hard link),
    and an existing ``dst`` is only replaced with ``overwrite=True``; both are checked again when
    the finished file is put in place, so a file that appeared meanwhile is not replaced unasked.
    """
    src, dst = Path(src), Path(dst)
    if os.path.lexists(dst) and _same_file(src, dst):
        raise CheckpointError(f"{dst} is the source checkpoint itself; write the slim copy to another file")
    if os.path.lexists(dst) and not dst.is_dir() and not overwrite:
        raise CheckpointError(f"{dst} already exists; choose another name or allow replacing it (--overwrite)")
    _check_destination(dst)
    state = read_checkpoint(src)
    weights, training, meta = split_state(state)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.slim.ckpt")
    try:
        try:
            save_checkpoint([{"name": n, "data": v} for n, v in weights.items()], tmp, metadata=meta)
        except CheckpointError as exc:  # name the file the user asked for, not the temporary one
            raise CheckpointError(f"cannot write {dst}: " + str(exc).removeprefix(f"cannot write {tmp}: ")) from None
        if os.path.lexists(dst) and _same_file(src, dst):
            raise CheckpointError(f"{dst} became the source checkpoint while slim ran; nothing was replaced")
        try:
            if overwrite:
                os.replace(tmp, dst)
            else:
                rename_no_replace(tmp, dst)
        except FileExistsError:
            raise CheckpointError(f"{dst} appeared while slim ran; it is left as it is: choose another name or "
                                  "allow replacing it (--overwrite)") from None
        except OSError as exc:
            raise CheckpointError(f"cannot write {dst}: {error_reason(exc)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return len(weights) + len(meta), len(training)
