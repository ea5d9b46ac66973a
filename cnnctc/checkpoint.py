"""Reading, mapping and writing MindSpore checkpoints of CNN-CTC.

The hub file carries the network's 162 weights plus the optimizer state of its training run;
loading is strict about the weights, skips the optimizer state and names anything else.
"""
import contextlib
import os
from pathlib import Path

import numpy as np
import mindspore as ms

from .errors import CheckpointError

__all__ = ["read_checkpoint", "split_state", "load_weights", "save_checkpoint", "slim", "ALPHABET_KEY"]

ALPHABET_KEY = "alphabet"
# Entries MindSpore's optimizers and training wrappers add to a checkpoint.
_OPTIMIZER_PREFIXES = ("moment.", "mean_square.", "mean_grad.", "moments.", "accum.")
_TRAINING_SCALARS = {"global_step", "learning_rate", "scale_sense", "current_iterator_step",
                     "last_overflow_iterator_step", "epoch_num", "step_num"}


def _is_training_state(name):
    return name.startswith(_OPTIMIZER_PREFIXES) or name in _TRAINING_SCALARS


def read_checkpoint(path, *, weights_only=False):
    """The name -> value mapping of a checkpoint file, with a clear error for bad files.

    ``weights_only`` leaves the optimizer state on disk (three quarters of the hub file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    choice = (lambda name: not _is_training_state(name)) if weights_only else None
    try:
        return ms.load_checkpoint(str(path), choice_func=choice)
    except (ValueError, RuntimeError, OSError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({str(exc).splitlines()[0]})") from None


def split_state(state):
    """Split a checkpoint mapping into (weights, training_state, metadata)."""
    weights, training, meta = {}, {}, {}
    for name, value in state.items():
        if isinstance(value, str):
            meta[name] = value
        elif _is_training_state(name):
            training[name] = value
        else:
            weights[name] = value
    return weights, training, meta


def _as_parameter(name, value, dtype):
    array = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
    return ms.Parameter(ms.Tensor(array.astype(ms.dtype_to_nptype(dtype), copy=False)), name=name)


def load_weights(net, checkpoint, *, skip_prefixes=(), source=None):
    """Load ``checkpoint`` (a path or a mapping) into ``net`` strictly.

    Every parameter of ``net`` whose name does not start with one of ``skip_prefixes`` must be
    present with its shape; float16 values are cast to the parameter's dtype; optimizer state
    is ignored; any other unknown entry is an error naming it. Returns the checkpoint's
    string metadata (e.g. its alphabet).
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
    params = {n: _as_parameter(n, weights[n], p.dtype) for n, p in loadable.items()}
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    if not_loaded and set(not_loaded) & set(loadable):
        raise CheckpointError(f"{source}: MindSpore did not load {_names(sorted(not_loaded))}")
    return meta


def _names(items, limit=6):
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def save_checkpoint(params, path, *, metadata=None):
    """Write a checkpoint atomically (a temporary file renamed into place).

    ``params`` is a Cell or a list of {"name", "data"} dicts; ``metadata`` holds string
    (or scalar) entries such as the alphabet.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # MindSpore appends ".ckpt" to names without it, so the temporary name must end with it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.ckpt")
    try:
        ms.save_checkpoint(params, str(tmp), append_dict=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def slim(src, dst):
    """Write ``src`` without its optimizer state to ``dst``; returns (entries kept, entries dropped)."""
    state = read_checkpoint(src)
    weights, training, meta = split_state(state)
    save_checkpoint([{"name": n, "data": v} for n, v in weights.items()], dst, metadata=meta)
    return len(weights) + len(meta), len(training)
