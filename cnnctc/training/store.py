"""A run's checkpoint store: its folder (locked for the whole run), saving, the newest two, the resume point.

Rank 0 alone writes. ``cnnctc-<step>.ckpt`` files are put in place without replacing anything
(a file of that name that appeared meanwhile is another writer's and is left alone);
``best.ckpt`` is replaced only while it is still the file this run wrote. The folder is locked
with ``flock`` on the folder itself, so nothing is left in it and the system releases the lock
when the process ends, however it ends.
"""
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from .._files import Busy, exclusive_lock
from .._signals import interrupt_deferred
from ..checkpoint import read_checkpoint, save_checkpoint
from ..errors import CheckpointError, CnnctcError
from ..lineage import LINEAGE_KEY, parse_lineage
from .config import TrainConfig

__all__ = ["TRAIN_STATE_KEY", "step_checkpoints", "latest_checkpoint", "holds_run", "best_checkpoint_problem",
           "first_non_finite",
           "ResumePoint", "read_resume_point", "RunFolderLock", "CheckpointStore"]

TRAIN_STATE_KEY = "cnnctc_train_state"
BEST_NAME = "best.ckpt"
log = logging.getLogger(__name__)
_CKPT_PATTERN = re.compile(r"^cnnctc-(\d+)\.ckpt$")
# The temporary names save_checkpoint writes under (".<name>.<pid>.tmp.ckpt", and MindSpore's ".tmp").
_LEFTOVER_PATTERN = re.compile(r"^\.(cnnctc-\d+\.ckpt|best\.ckpt)\.\d+\.tmp\.(ckpt|tmp)$")


def step_checkpoints(directory):
    """The ``cnnctc-<step>.ckpt`` files in ``directory``, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("cnnctc-*.ckpt")
             if (m := _CKPT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory):
    """The periodic checkpoint with the highest step in ``directory``, or None."""
    found = step_checkpoints(directory)
    return found[-1] if found else None


def best_checkpoint_problem(directory):
    """What the ``best.ckpt`` in ``directory`` is when it cannot be a checkpoint (a folder, an empty or a
    text file, ...), as a phrase; None when there is none or it may be one. Only its first bytes are read:
    a MindSpore checkpoint is a protobuf message whose first field is a value (byte 0x0a)."""
    best = Path(directory) / BEST_NAME
    if not os.path.lexists(best):
        return None
    if best.is_dir():
        return "a folder"
    if not best.is_file():
        return "a broken symbolic link" if best.is_symlink() else "not a regular file"
    try:
        with open(best, "rb") as f:
            head = f.read(256)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not head:
        return "an empty file"
    if head[:1] == b"\x0a":
        return None
    try:
        head.decode("utf-8")
        return "a text file, not a checkpoint"
    except UnicodeDecodeError:
        return "not a MindSpore checkpoint"


def holds_run(directory):
    """True when ``directory`` holds a run's checkpoints."""
    directory = Path(directory)
    return directory.is_dir() and bool(step_checkpoints(directory) or (directory / BEST_NAME).exists())


def first_non_finite(named_values):
    """The name of the first floating-point value holding NaN or infinity, or None."""
    for name, value in named_values:
        if isinstance(value, str):
            continue
        array = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return name
    return None


@dataclasses.dataclass
class ResumePoint:
    """The newest checkpoint of an unfinished run, and the run's saved state."""
    path: Path
    contents: dict
    state: dict
    config: TrainConfig      # the run's own settings
    step: int
    epoch: int
    epoch_step: int
    total_steps: int
    lineage: dict            # the run's lineage so far (UNKNOWN for runs saved before it was kept)


def read_resume_point(directory):
    """Read the newest ``cnnctc-<step>.ckpt`` of the run in ``directory``; CnnctcError says what to do."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CnnctcError(f"--resume {directory}: {'not a folder' if directory.exists() else 'no such folder'}")
    found = step_checkpoints(directory)
    if not found:
        problem = best_checkpoint_problem(directory)
        if problem:
            hint = f"; its {BEST_NAME} is {problem}, so start the run without --resume, into another --out"
        elif (directory / BEST_NAME).exists():
            hint = f"; its best.ckpt can start a new run: --pretrained {directory / BEST_NAME}"
        else:
            hint = "; start the run without --resume"
        raise CnnctcError(f"--resume {directory}: no cnnctc-<step>.ckpt checkpoint to resume from{hint}")
    last = found[-1]
    try:
        contents = read_checkpoint(last)
    except CheckpointError as exc:
        hint = f"; remove it to resume from {found[-2].name}" if len(found) > 1 else ""
        raise CheckpointError(f"{exc}{hint}") from None
    try:
        state = json.loads(contents[TRAIN_STATE_KEY])
        run = TrainConfig(**state["config"])
        step, total = int(state["step"]), int(state["total_steps"])
        epoch, epoch_step = int(state["epoch"]), int(state["epoch_step"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{last}: not a cnnctc fine-tuning checkpoint (no training state)") from None
    return ResumePoint(last, contents, state, run, step, epoch, epoch_step, total,
                       parse_lineage(contents.get(LINEAGE_KEY)))


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)   # what flock says where locks are not kept


class RunFolderLock:
    """An exclusive lock on a run folder for the whole run; a second writer is refused at once."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self._held = contextlib.ExitStack()

    def acquire(self):
        try:
            fd = self._held.enter_context(exclusive_lock(self.directory))
        except Busy:
            raise CnnctcError(f"--out {self.directory} is in use by another finetune run that is still going; "
                              "wait for it to end, or choose another --out") from None
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                return self   # a file system without locks: the re-checks at each save still hold
            raise CnnctcError(f"--out {self.directory}: cannot open the folder ({exc.strerror or exc})") from None
        current, opened = os.stat(self.directory), os.fstat(fd)
        if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            self.release()
            raise CnnctcError(f"--out {self.directory} was replaced while the run started; start it again")
        return self

    def release(self):
        self._held.close()  # closing the descriptor releases the lock


def _identity(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class CheckpointStore:
    """Where a run's checkpoints go; it remembers which files it put in place."""

    def __init__(self, out_dir, keep):
        self.out_dir = Path(out_dir)
        self.keep = keep
        self.last_saved = None
        self._mine = {}   # file name -> identity of the file this run put there

    def remove_leftovers(self):
        """Remove the temporary checkpoints a killed run left (under the lock, no live run writes here)."""
        for path in self.out_dir.iterdir():
            if _LEFTOVER_PATTERN.match(path.name):
                with contextlib.suppress(OSError):
                    path.unlink()
                    log.info("removed %s, left by a run that was killed while saving", path)

    def adopt(self):
        """Take the folder's checkpoints as this run's own (a resumed run, under the lock)."""
        for path in [*step_checkpoints(self.out_dir), self.out_dir / BEST_NAME]:
            with contextlib.suppress(OSError):
                self._mine[path.name] = _identity(path)

    def _is_mine(self, path):
        try:
            return self._mine.get(path.name) == _identity(path)
        except OSError:
            return False

    def save(self, cell, path, metadata):
        """Write ``cell`` with its ``metadata`` to ``path``; never replaces a file this run did not write."""
        path = Path(path)
        mine = self._mine.get(path.name)
        if mine is not None and os.path.lexists(path):
            try:
                unchanged = _identity(path) == mine
            except OSError:
                unchanged = False
            if not unchanged:
                raise CnnctcError(f"{path} was replaced by another writer during this run; it is left alone and "
                                  "this run stops (its other checkpoints are kept)")
        save_checkpoint(cell, path, metadata=metadata, overwrite=mine is not None)
        self._mine[path.name] = _identity(path)
        return path

    def save_step(self, cell, step, metadata):
        """Save ``cnnctc-<step>.ckpt`` and remove all but the newest ``keep`` of them."""
        path = self.out_dir / f"cnnctc-{step:07d}.ckpt"
        with interrupt_deferred():
            self.save(cell, path, metadata)
            self.last_saved = path
            # Only this run's own files, unchanged (a resumed run adopted its earlier ones): a file of
            # that name that someone else put or replaced in the folder meanwhile is left alone.
            for old in [p for p in step_checkpoints(self.out_dir) if self._is_mine(p)][:-self.keep]:
                old.unlink(missing_ok=True)
                self._mine.pop(old.name, None)
        return path
