"""Fine-tune CNN-CTC with the official recipe, from the hub weights, on one machine or several.

Recipe (SPEC section 4): CTC loss over all 26 columns, centered RMSProp (momentum 0.8), a fixed
loss scale of 8096, linear warm-up from 1/16 of the base rate then half-cosine to 0, mixed
precision O2 where the device supports it. Data parallel under ``msrun``: each worker reads its
share of every global batch, gradients are averaged, rank 0 alone writes checkpoints.

:class:`Trainer` runs a fine-tuning in named steps — :meth:`~Trainer.check` every setting and
path before anything is built, :meth:`~Trainer.build` the network and optimizer,
:meth:`~Trainer.resume` an earlier run, :meth:`~Trainer.train_step`, :meth:`~Trainer.validate`,
:meth:`~Trainer.save` — and :func:`finetune` is the one-call form. Joining an ``msrun`` cluster is
the caller's job (the CLI does it); the trainer is given its rank and the world size.
"""
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import numbers
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from ._mindspore import mindspore as ms
from mindspore import nn, ops

from ._signals import interrupt_deferred as _interrupt_deferred
from ._signals import terminate_as_interrupt as _terminate_as_interrupt
from .batches import MAX_WORKERS, BatchLoader, default_workers, epoch_order
from .checkpoint import ALPHABET_KEY, load_weights, read_checkpoint, save_checkpoint
from .data import LabelFilter, LmdbDataset
from .download import fetch
from .errors import CheckpointError, CnnctcError
from .evaluation import evaluate
from .loader import configure_context
from .recognizer import Recognizer
from .registry import build_network, get_model, list_models

__all__ = ["TrainConfig", "Trainer", "FinetuneResult", "DivergenceError", "finetune", "init_from_pretrained",
           "resolve_pretrained", "lr_schedule", "CTCLossCell", "TrainStep", "latest_checkpoint", "step_checkpoints",
           "TRAIN_STATE_KEY", "MAX_STEPS", "MAX_BATCH_SIZE", "MAX_EPOCHS", "MAX_SKIPPED_STEPS"]

log = logging.getLogger(__name__)

TRAIN_STATE_KEY = "cnnctc_train_state"
_CKPT_PATTERN = re.compile(r"^cnnctc-(\d+)\.ckpt$")
# Bounds that keep a typo from allocating the learning-rate table or a batch beyond memory.
MAX_STEPS = 10_000_000
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4096
# A run whose gradients overflow this many steps in a row learns nothing: every step is skipped.
MAX_SKIPPED_STEPS = 20
_AMP_LEVELS = (None, "O0", "O1", "O2", "O3")
_FORBIDDEN_SYMBOLS = "\t\r\n\0"
# Settings that define a run; on --resume they come from the run's checkpoint and may not change.
_RUN_FIELDS = ("alphabet", "epochs", "steps", "batch_size", "lr", "warmup_steps", "warmup_start", "momentum",
               "loss_scale", "amp_level", "max_length", "output_channel", "seed")


class DivergenceError(CnnctcError):
    """The loss or the weights became NaN or infinite, or every step overflowed; the run stopped
    without saving them."""


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_alphabet(alphabet, what="--alphabet"):
    """Raise CnnctcError unless ``alphabet`` is a non-empty string of distinct, printable-line symbols."""
    if not isinstance(alphabet, str):
        raise CnnctcError(f"{what} must be a string of symbols, got {alphabet!r}")
    if not alphabet:
        raise CnnctcError(f"{what} is empty; give the symbols to read (e.g. 0123456789), or leave it out for "
                          "the pretrained model's alphabet")
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
        raise CnnctcError(f"{what} repeats {''.join(repeated)!r}; every symbol must appear once")
    if any(c in _FORBIDDEN_SYMBOLS for c in alphabet):
        raise CnnctcError(f"{what} holds a tab, newline or NUL; labels cannot contain those")


@dataclasses.dataclass
class TrainConfig:
    """Fine-tuning settings; the defaults are the official recipe of the hub checkpoint."""
    alphabet: str = None            # default: the pretrained checkpoint's (else the model's)
    epochs: int = 3
    steps: int = None               # overrides epochs when given
    batch_size: int = 192           # per worker
    lr: float = 5e-4
    warmup_steps: int = 2000        # capped at a tenth of the run for short fine-tunes
    warmup_start: float = 0.0625    # the warm-up starts at this fraction of lr
    momentum: float = 0.8
    loss_scale: float = 8096.0
    amp_level: str = None           # default: O2 on Ascend/GPU, O0 on CPU (no fast float16 there)
    save_every: int = 1000          # steps between checkpoints
    keep: int = 2                   # periodic checkpoints kept (best.ckpt is kept besides)
    max_length: int = 13
    output_channel: int = 512
    seed: int = 1
    log_every: int = 50
    workers: int = None             # data-loading processes (default: the cores divided by the ranks)

    def check(self):
        """Raise CnnctcError naming the first setting out of its range (nothing is built)."""
        def integer(name, low, high=None):
            value = getattr(self, name)
            if not _is_int(value) or value < low or (high is not None and value > high):
                bound = f"from {low} to {high}" if high is not None else f"at least {low}"
                raise CnnctcError(f"--{name.replace('_', '-')} must be an integer {bound}, got {value!r}")

        def real(name, low, high=None, *, low_open=True, high_open=False):
            value = getattr(self, name)
            ok = _is_real(value) and math.isfinite(value) and (value > low if low_open else value >= low) and (
                high is None or (value < high if high_open else value <= high))
            if not ok:
                limits = f"{'above' if low_open else 'at least'} {low:g}"
                if high is not None:
                    limits += f" and {'below' if high_open else 'at most'} {high:g}"
                raise CnnctcError(f"--{name.replace('_', '-')} must be a finite number {limits}, got {value!r}")

        if self.alphabet is not None:
            check_alphabet(self.alphabet)
        integer("epochs", 1, MAX_EPOCHS)
        if self.steps is not None:
            integer("steps", 1, MAX_STEPS)
        integer("batch_size", 1, MAX_BATCH_SIZE)
        real("lr", 0, 1e30)  # the schedule is float32: a larger rate would overflow it
        integer("warmup_steps", 0)
        real("warmup_start", 0, 1)
        real("momentum", 0, 1, low_open=False, high_open=True)
        real("loss_scale", 0)
        if self.amp_level not in _AMP_LEVELS:
            raise CnnctcError(f"amp_level must be one of O0, O1, O2, O3 (or None for the device's), "
                              f"got {self.amp_level!r}")
        integer("save_every", 1)
        integer("keep", 1)
        integer("max_length", 1)
        if not _is_int(self.output_channel) or self.output_channel < 16 or self.output_channel % 16:
            raise CnnctcError(f"--output-channel must be a positive multiple of 16 (512 is the published width), "
                              f"got {self.output_channel!r}")
        integer("seed", 0, 2 ** 32 - 1)
        integer("log_every", 1)
        if self.workers is not None:
            integer("workers", 1, MAX_WORKERS)


def lr_schedule(total_steps, base_lr, warmup_steps, warmup_start=0.0625):
    """Learning rate per step: linear warm-up from ``warmup_start * base_lr``, then half-cosine to 0."""
    steps = np.arange(total_steps, dtype=np.float64)
    warm = max(0, min(warmup_steps, total_steps))
    lr = np.empty(total_steps, np.float64)
    if warm:
        lr[:warm] = base_lr * (warmup_start + (1 - warmup_start) * steps[:warm] / warm)
    rest = total_steps - warm
    if rest:
        lr[warm:] = base_lr * 0.5 * (1 + np.cos(np.pi * (steps[warm:] - warm) / rest))
    return lr.astype(np.float32)


class CTCLossCell(nn.Cell):
    """Mean over the batch of the CTC loss of (B, T, C) logits; the blank is the last class."""

    def __init__(self, network, blank):
        super().__init__(auto_prefix=False)  # keep the network's parameter names official
        self.network = network
        self.ctc = nn.CTCLoss(blank=blank, reduction="none")

    def construct(self, images, targets, lengths):
        logits = self.network(images)
        log_probs = ops.log_softmax(ops.transpose(logits, (1, 0, 2)).astype(ms.float32), -1)
        input_lengths = ops.fill(ms.int32, (log_probs.shape[1],), log_probs.shape[0])
        return self.ctc(log_probs, targets, input_lengths, lengths).mean()


class TrainStep(nn.Cell):
    """One optimizer step with a fixed loss scale; a step whose gradients overflow is skipped.

    Returns (loss, overflow). With several workers the gradients are averaged and so is the
    loss, so every worker sees the same value (and stops on the same step if it is not finite).
    (MindSpore's TrainOneStepWithLossScaleCell reads Ascend-only float status on CPU in 2.8.)
    """

    def __init__(self, loss_net, optimizer, loss_scale, world=1):
        super().__init__(auto_prefix=False)
        self.network = loss_net
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.scale = ms.Tensor(np.float32(loss_scale))
        self.reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=world) if world > 1 else None
        self.loss_sum = ops.AllReduce() if world > 1 else None
        self.world = world

    def construct(self, images, targets, lengths):
        loss = self.network(images, targets, lengths)
        sens = ops.fill(loss.dtype, loss.shape, self.scale)
        grads = self.grad(self.network, self.weights)(images, targets, lengths, sens)
        if self.reducer is not None:
            grads = self.reducer(grads)
            loss = self.loss_sum(loss) / self.world
        grads = tuple(g / self.scale.astype(g.dtype) for g in grads)
        finite = ms.amp.all_finite(grads)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
        return loss, ops.logical_not(finite)


def step_checkpoints(directory):
    """The ``cnnctc-<step>.ckpt`` files in ``directory``, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("cnnctc-*.ckpt")
             if (m := _CKPT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory):
    """The periodic checkpoint with the highest step in ``directory``, or None."""
    found = step_checkpoints(directory)
    return found[-1] if found else None


def _weights_digest(net):
    digest = hashlib.sha256()
    for p in net.trainable_params():
        digest.update(p.asnumpy().tobytes())
    return digest.hexdigest()[:16]


def _first_non_finite(named_values):
    """The name of the first floating-point value holding NaN or infinity, or None."""
    for name, value in named_values:
        if isinstance(value, str):
            continue
        array = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return name
    return None


@dataclasses.dataclass
class FinetuneResult:
    out_dir: Path
    steps: int
    last_checkpoint: Path
    best_checkpoint: Path
    best_accuracy: float
    history: list


# A hub uid: owner/version/name, each part a plain name.
_UID_LIKE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*){2,}/?$")


def _pretrained_source(pretrained, *, model=None, manifest=None):
    """(local checkpoint path, None), (None, registered manifest to fetch) or (None, None) for none."""
    if pretrained is None or (isinstance(pretrained, str) and pretrained.strip().lower() == "none"):
        return None, None
    if not isinstance(pretrained, (str, os.PathLike)):
        raise CnnctcError(f"--pretrained must be hub, a model uid, a checkpoint path or none, got {pretrained!r}")
    text = os.fspath(pretrained)
    if text == "hub":
        return None, get_model(model, manifest=manifest).manifest
    if text.strip().strip("/") in {entry.uid for entry in list_models()}:
        return None, get_model(text).manifest
    path = Path(text).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir():
        raise CheckpointError(f"--pretrained {text} is a folder; name a checkpoint file in it "
                              "(e.g. its best.ckpt or newest cnnctc-<step>.ckpt)")
    if _UID_LIKE.match(text) and not text.endswith(".ckpt"):
        get_model(text)  # an unknown uid: its error lists the known ones
    raise CheckpointError(f"--pretrained {text}: no such checkpoint file (give hub, a model uid, a .ckpt path "
                          "or none)")


def resolve_pretrained(pretrained, *, model=None, manifest=None):
    """(checkpoint path, manifest of its model or None) for a ``pretrained`` setting; (None, None) for none.

    ``pretrained`` is "hub" (the asset of ``model``/``manifest``, downloaded and verified),
    a registered uid (that entry's asset), a checkpoint path, or None / "none".
    """
    path, source = _pretrained_source(pretrained, model=model, manifest=manifest)
    if path is None and source is not None:
        path = fetch(source)
    return path, source


@dataclasses.dataclass
class _Pretrained:
    path: Path
    state: dict
    alphabet: str       # the alphabet its head was trained for


def _read_pretrained(path, source_manifest, fallback_alphabet):
    state = read_checkpoint(path, weights_only=True)
    bad = _first_non_finite(state.items())
    if bad is not None:
        raise CheckpointError(f"{path}: {bad} holds NaN or infinite values; it cannot be fine-tuned from")
    saved = state.get(ALPHABET_KEY)
    alphabet = saved if isinstance(saved, str) else (source_manifest.alphabet if source_manifest else
                                                     fallback_alphabet)
    return _Pretrained(Path(path), state, alphabet)


def _load_pretrained(net, pretrained, alphabet):
    same_head = pretrained.alphabet == alphabet
    load_weights(net, pretrained.state, skip_prefixes=() if same_head else ("Prediction.",),
                 source=str(pretrained.path))
    log.info("initialised from %s (%s)", pretrained.path, "all weights" if same_head else
             f"backbone only: the head is new for {len(alphabet) + 1} classes")


def init_from_pretrained(net, pretrained, manifest, alphabet):
    """Load the pretrained checkpoint into ``net``; the head only when the alphabet is the same.

    ``pretrained`` is as for :func:`resolve_pretrained` ("hub" means ``manifest``'s asset).
    """
    path, source = resolve_pretrained(pretrained, manifest=manifest)
    if path is None:
        log.info("starting from random weights")
        return
    _load_pretrained(net, _read_pretrained(path, source, manifest.alphabet), alphabet)


def _cluster_size():
    """(rank, world) of an initialised MindSpore communication, or None."""
    from mindspore.communication import management
    if not management.GlobalComm.INITED:
        return None
    return management.get_rank(), management.get_group_size()


def _resolve_rank(rank, world):
    """(rank, world) as given, else those of a joined cluster, else a single process."""
    if rank is None and world is None:
        joined = _cluster_size()
        if joined is not None:
            return joined
        if os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and os.environ.get("MS_WORKER_NUM", "1") != "1":
            raise CnnctcError("started by msrun but the cluster is not joined: call mindspore.communication.init() "
                              "first and pass rank= and world= (the cnnctc command does this)")
        return 0, 1
    rank, world = (0 if rank is None else rank), (1 if world is None else world)
    if not (_is_int(world) and world >= 1 and _is_int(rank) and 0 <= rank < world):
        raise CnnctcError(f"rank {rank!r} of world {world!r}: the world size must be at least 1 and the rank "
                          "in 0 .. world - 1")
    return int(rank), int(world)


def _dataset_paths(value):
    if value is None:
        return []
    return [Path(p) for p in ([value] if isinstance(value, (str, os.PathLike)) else value)]


def _pretrained_name(pretrained):
    """How a run names its starting weights in its state: hub, a uid, a path, or none."""
    if pretrained is None:
        return "none"
    return os.fspath(pretrained).strip() if isinstance(pretrained, (str, os.PathLike)) else repr(pretrained)


def _flag(name):
    return "--" + name.replace("_", "-")


class Trainer:
    """One fine-tuning run, in named steps; :meth:`run` does them all and returns a FinetuneResult.

    The arguments are those of :func:`finetune`. Nothing heavy happens in the constructor.
    """

    def __init__(self, train, valid, out_dir, *, pretrained="hub", config=None, resume=None, manifest=None,
                 model=None, device_target=None, on_step=None, rank=None, world=None):
        self.train_paths = _dataset_paths(train)
        self.valid_paths = _dataset_paths(valid)
        self.out_dir = Path(out_dir)
        self.pretrained = pretrained
        self.config = dataclasses.replace(config or TrainConfig())
        self.resume_dir = Path(resume) if resume else None
        self._pretrained_name = _pretrained_name(pretrained)
        self.model, self.manifest_arg = model, manifest
        self.device_target = device_target
        self.on_step = on_step
        self.rank, self.world = rank, world
        # Run state, saved in every checkpoint.
        self.step = self.epoch = self.epoch_step = 0
        self.best = -1.0
        self.history = []
        self.total_steps = self.steps_per_epoch = None
        self._resume_from = None       # (checkpoint path, its contents) when resuming
        self._resume_state = {}
        self._pretrained = None
        self._last_saved = None
        self._skipped_in_a_row = 0
        self._checked = False
        self._created_out_dir = False

    # -- check: every setting and path, before a network exists ---------------------------------------------

    def check(self):
        """Check every setting and path; raises CnnctcError naming the first problem and what to do.

        Order: settings, --out, the resumed run, --pretrained (a local file is read), the datasets
        (opened and scanned), then a hub asset is fetched: a typo never waits for a download.
        Needs no cluster: under msrun every process can check before joining.
        """
        self.rank, self.world = _resolve_rank(self.rank, self.world)
        self.config.check()
        if not self.train_paths:
            raise CnnctcError("no training dataset given (--train LMDB...)")
        self._check_out_dir()
        entry = get_model(self.model, manifest=self.manifest_arg)
        holds_run = self.out_dir.is_dir() and bool(step_checkpoints(self.out_dir) or
                                                   (self.out_dir / "best.ckpt").exists())
        if self.resume_dir is not None:
            stored_model = self._read_resume_point()
            if self.model is None and self.manifest_arg is None and stored_model in {e.uid for e in list_models()}:
                entry = get_model(stored_model)
            if holds_run and os.path.realpath(self.out_dir) != os.path.realpath(self.resume_dir):
                raise CnnctcError(f"--out {self.out_dir} holds the checkpoints of another run; resume into "
                                  f"--out {self.resume_dir} or an empty folder")
        elif holds_run:
            raise CnnctcError(f"{self.out_dir} already holds the checkpoints of a run; continue it with --resume "
                              f"{self.out_dir}, or choose another --out")
        self.manifest = entry.manifest
        width = self.manifest.network_kwargs()["final_feature_width"]
        if self.config.max_length > width:
            raise CnnctcError(f"max_length {self.config.max_length} exceeds the {width} columns the network reads")
        for option, paths in (("--train", self.train_paths), ("--valid", self.valid_paths)):
            for path in paths:
                if not path.exists():
                    raise CnnctcError(f"{option} {path}: no such LMDB dataset")
        local, source = (None, None) if self.resume_dir else _pretrained_source(
            self.pretrained, model=self.model, manifest=self.manifest_arg)
        if local is not None:
            self._read_pretrained(local, None)
        if self.config.alphabet is not None:
            self.alphabet = self.config.alphabet
        elif self._pretrained is not None:
            self.alphabet = self._pretrained.alphabet
        else:
            self.alphabet = (source or self.manifest).alphabet
        check_alphabet(self.alphabet, "the alphabet")
        self._open_datasets()
        try:
            if source is not None:
                self._read_pretrained(fetch(source), source)
            if self.rank == 0:
                self._make_out_dir()
        except BaseException:
            self.train_set.close()
            raise
        self._checked = True

    def set_rank(self, rank, world):
        """This worker's place in the joined cluster, after :meth:`check` (the world size it planned for)."""
        rank, world = _resolve_rank(rank, world)
        if self._checked and world != self.world:
            raise CnnctcError(f"the cluster has {world} workers but the run was checked for {self.world}")
        self.rank, self.world = rank, world

    def _read_pretrained(self, path, source):
        self._pretrained = _read_pretrained(path, source, self.manifest.alphabet)
        head = self._pretrained.state.get("Prediction.weight")
        if head is not None and len(head.shape) == 2 and int(head.shape[1]) != self.config.output_channel:
            raise CnnctcError(f"--pretrained {path} is {int(head.shape[1])} channels wide but the run builds "
                              f"{self.config.output_channel}; pass --output-channel {int(head.shape[1])}")

    def _check_out_dir(self):
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise CnnctcError(f"--out {out} is a file; give a folder for the checkpoints")
        if (out / "data.mdb").exists():
            raise CnnctcError(f"--out {out} is an LMDB dataset; give another folder for the checkpoints")
        existing = out
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise CnnctcError(f"--out {out}: {existing} is a file, so the folder cannot be made there")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CnnctcError(f"--out {out}: {existing} is not writable; give a folder you can write to")

    def _make_out_dir(self):
        try:
            self._created_out_dir = not self.out_dir.exists()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.out_dir):
                pass
        except OSError as exc:
            raise CnnctcError(f"--out {self.out_dir}: cannot write there ({exc.strerror or exc})") from None

    def _read_resume_point(self):
        """Read the run's newest checkpoint and take its settings; returns the run's model uid."""
        directory = self.resume_dir
        if not directory.is_dir():
            raise CnnctcError(f"--resume {directory}: {'not a folder' if directory.exists() else 'no such folder'}")
        found = step_checkpoints(directory)
        if not found:
            hint = (f"; its best.ckpt can start a new run: --pretrained {directory / 'best.ckpt'}"
                    if (directory / "best.ckpt").exists() else "; start the run without --resume")
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
        given = self._pretrained_name
        self._pretrained_name = state.get("pretrained") or given  # runs saved before it was recorded: any
        if given not in ("hub", self._pretrained_name):
            raise CnnctcError(f"--resume {directory}: the run continues from its own weights, --pretrained {given} "
                              "does not apply; leave it out")
        new_run = f"--pretrained {last} --out NEW_DIR"
        if run.output_channel != TrainConfig.output_channel:
            new_run += f" --output-channel {run.output_channel}"
        if step >= total:
            raise CnnctcError(f"--resume {directory}: the run is finished at step {step}; to train further, start a "
                              f"new run from its weights: {new_run} --steps {self.config.steps or 'N'}")
        self._refuse_changes(run, total, new_run)
        # The run continues with its own settings; only how often it logs and saves may change.
        self.config = dataclasses.replace(run, steps=total, save_every=self.config.save_every,
                                          keep=self.config.keep, log_every=self.config.log_every,
                                          workers=self.config.workers)
        self.config.check()
        self.step, self.epoch, self.epoch_step, self.total_steps = step, epoch, epoch_step, total
        self.best = float(state.get("best_accuracy", -1.0))
        self.history = list(state.get("history", []))
        self._resume_state = state
        self._resume_from = (last, contents)
        log.info("resuming from %s at step %d of %d", last, step, total)
        return state.get("model")

    def _refuse_changes(self, run, total, new_run):
        """A setting given for a resumed run (other than the recipe default) must be the run's own."""
        defaults = TrainConfig()
        for name in _RUN_FIELDS:
            given = getattr(self.config, name)
            if given == getattr(defaults, name):
                continue
            if name == "steps":
                if given != total:
                    raise CnnctcError(f"--resume {self.resume_dir}: the run was planned for {total} steps (its "
                                      f"learning-rate schedule ends there) and --steps cannot change that; resume "
                                      f"without --steps, or train further in a new run: {new_run} --steps {given}")
            elif name == "epochs" and run.steps is not None:
                raise CnnctcError(f"--resume {self.resume_dir}: the run counts {total} steps, not epochs; "
                                  "resume without --epochs")
            elif given != getattr(run, name):
                raise CnnctcError(f"--resume {self.resume_dir}: the run has {_flag(name)} {getattr(run, name)}, not "
                                  f"{given}; a resumed run keeps its settings (leave {_flag(name)} out, or start "
                                  f"a new run: {new_run})")

    def _open_datasets(self):
        config = self.config
        label_filter = LabelFilter.for_alphabet(self.alphabet, config.max_length)
        preprocess = self.manifest.preprocess
        for path in self.valid_paths:  # a typo in --valid must not wait until after training
            try:
                with LmdbDataset(path, label_filter, preprocess_config=preprocess) as dataset:
                    if not len(dataset):
                        raise CnnctcError(f"--valid {path}: none of its samples fits the alphabet and length limit "
                                          f"(skipped: {_counts(dataset.skipped)})")
            except CnnctcError as exc:
                raise CnnctcError(exc if str(exc).startswith("--valid") else f"--valid {exc}") from None
        try:
            self.train_set = LmdbDataset(self.train_paths, label_filter, preprocess_config=preprocess)
        except CnnctcError as exc:
            raise CnnctcError(f"--train {exc}") from None
        try:
            self._plan_steps()
        except BaseException:
            self.train_set.close()
            raise

    def _plan_steps(self):
        config, kept = self.config, len(self.train_set)
        if self.train_set.skipped:
            log.info("training data: %d kept, skipped %s", kept, _counts(self.train_set.skipped))
        if kept == 0:
            raise CnnctcError(f"--train: none of its samples fits the alphabet {self.alphabet!r} and length limit "
                              f"(skipped: {_counts(self.train_set.skipped)})")
        self.steps_per_epoch = kept // (config.batch_size * self.world)
        if self.steps_per_epoch == 0:
            raise CnnctcError(f"{kept} usable training samples are fewer than one batch ({config.batch_size} x "
                              f"{self.world} workers); lower --batch-size")
        planned = config.steps or config.epochs * self.steps_per_epoch
        if self.total_steps is None:
            if planned > MAX_STEPS:
                raise CnnctcError(f"{config.epochs} epochs of {self.steps_per_epoch} steps exceed {MAX_STEPS} steps; "
                                  "give fewer --epochs")
            self.total_steps = planned
        else:  # resumed: the data order only continues with the same data and workers
            state = self._resume_state
            if state.get("world", 1) != self.world:
                raise CnnctcError(f"--resume {self.resume_dir}: the run was trained by {state.get('world', 1)} "
                                  f"worker(s), this is {self.world}; resume it with the same number")
            if state.get("train_samples", kept) != kept:
                raise CnnctcError(f"--resume {self.resume_dir}: the run trained on {state['train_samples']} usable "
                                  f"samples, this --train has {kept}; resume with the run's own --train")

    # -- build and resume ------------------------------------------------------------------------------------

    def build(self):
        """The network (with the pretrained weights), the loss, the optimizer and the training cell."""
        config = self.config
        ms.set_seed(config.seed)
        if self.world > 1:
            joined = _cluster_size()
            if joined != (self.rank, self.world):
                seen = "no cluster" if joined is None else f"rank {joined[0]} of {joined[1]}"
                raise CnnctcError(f"rank {self.rank} of {self.world} workers needs a joined cluster of that size "
                                  f"(run under msrun); this process has {seen}")
            ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
        self.run_manifest = self.manifest.replace(alphabet=self.alphabet,
                                                  lowercase_labels=self.alphabet == self.alphabet.lower())
        try:
            self.net = build_network(self.run_manifest, output_channel=config.output_channel)
        except (ValueError, TypeError) as exc:
            raise CnnctcError(f"cannot build the network: {exc}") from None
        if self._pretrained is not None:
            _load_pretrained(self.net, self._pretrained, self.alphabet)
            self._pretrained = None  # the weights are in the network now
        elif self._resume_from is None:
            log.info("starting from random weights")
        self.amp_level = config.amp_level or ("O0" if self.device == "CPU" else "O2")
        if self.amp_level != "O0":
            ms.amp.auto_mixed_precision(self.net, self.amp_level)
        loss_net = CTCLossCell(self.net, blank=len(self.alphabet))
        self.warmup = min(config.warmup_steps, max(1, self.total_steps // 10))
        self.schedule = lr_schedule(self.total_steps, config.lr, self.warmup, config.warmup_start)
        optimizer = nn.RMSProp(self.net.trainable_params(), learning_rate=ms.Tensor(self.schedule), decay=0.9,
                               momentum=config.momentum, epsilon=1e-10, centered=True)
        self.train_cell = TrainStep(loss_net, optimizer, config.loss_scale, self.world)
        self.loader = BatchLoader(self.train_set, config.workers or default_workers(self.world))
        self.reader = Recognizer(network=self.net, manifest=self.run_manifest, batch_size=min(config.batch_size, 64))

    def resume(self):
        """Load the resumed run's weights and optimizer state (nothing to do for a new run)."""
        if self._resume_from is not None:
            last, contents = self._resume_from
            load_weights(self.net, contents, source=str(last))
            names = {p.name for p in self.net.get_parameters()}
            optimizer_state = {k: v for k, v in contents.items() if not isinstance(v, str) and k not in names}
            # strict_load: a lax load matches names by suffix and would pour moment.X into X.
            ms.load_param_into_net(self.train_cell, optimizer_state, strict_load=True)
            self._resume_from = None
        bad = _first_non_finite((p.name, p) for p in self.net.get_parameters())
        if bad is not None:
            raise CheckpointError(f"the starting weights hold NaN or infinite values ({bad})")
        self.train_cell.set_train(True)

    # -- the steps of a run ----------------------------------------------------------------------------------

    def train_step(self, images, targets, lengths):
        """One optimizer step on a batch; returns the loss.

        Raises DivergenceError when the loss is not finite, or when the gradients overflowed in
        MAX_SKIPPED_STEPS steps in a row (the loss has exploded and no step is applied any more).
        """
        loss, overflow = self.train_cell(images, targets, lengths)
        self.step += 1
        self.epoch_step += 1
        value = float(loss.asnumpy())
        skipped = bool(overflow.asnumpy())
        if not math.isfinite(value):
            self._diverged(f"the loss became {value}")
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if skipped else 0
        if self._skipped_in_a_row >= MAX_SKIPPED_STEPS:
            self._diverged(f"the gradients overflowed in {self._skipped_in_a_row} steps in a row, so none was "
                           f"applied (loss {value:.4g})")
        if self.on_step:
            self.on_step(self.step, value)
        if self.step % self.config.log_every == 0 or self.step == self.total_steps:
            self.check_weights()
            rate = (self.step - self._first_step) * self.config.batch_size / (time.monotonic() - self._started)
            log.info("step %d/%d epoch %d loss %.4f lr %.3g%s (%.1f images/s per worker)", self.step,
                     self.total_steps, self.epoch + 1, value, self.schedule[self.step - 1],
                     " overflow: step skipped" if skipped else "", rate)
        return value

    def check_weights(self):
        """Raise DivergenceError if a weight or a batch-norm statistic is NaN or infinite."""
        bad = _first_non_finite((p.name, p) for p in self.net.get_parameters())
        if bad is not None:
            self._diverged(f"the weights became NaN or infinite ({bad})")

    def _diverged(self, what):
        if self.rank != 0:
            where = "rank 0 keeps the checkpoints saved before"
        else:
            kept = self._last_saved or latest_checkpoint(self.out_dir)
            where = f"the checkpoints saved before are kept (newest: {kept})" if kept else "no checkpoint was written"
        raise DivergenceError(f"training diverged at step {self.step}: {what}; lower --lr (it was "
                              f"{self.config.lr:g}) and start again; {where}")

    def validate(self):
        """Validation accuracy (rank 0; None elsewhere or without --valid); saves best.ckpt when it improves."""
        self.check_weights()
        if not self.valid_paths or self.rank != 0:
            return None
        self.net.set_train(False)
        try:
            _, total = evaluate(self.reader, self.valid_paths, max_length=self.config.max_length)
        finally:
            self.train_cell.set_train(True)
        self.history.append({"step": self.step, "epoch": self.epoch + 1, "accuracy": total.accuracy,
                             "norm_ed": total.norm_ed})
        log.info("step %d epoch %d: validation accuracy %.2f%% (1-N.E.D. %.4f, %d samples)", self.step,
                 self.epoch + 1, total.accuracy, total.norm_ed, total.kept)
        if total.accuracy > self.best:
            self.best = total.accuracy
            self.save(self.out_dir / "best.ckpt")
        return total.accuracy

    def state_json(self):
        """The run's state as saved in its checkpoints (what --resume continues from)."""
        config = dataclasses.replace(self.config, alphabet=self.alphabet)
        return json.dumps({"step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
                           "total_steps": self.total_steps, "best_accuracy": self.best, "history": self.history,
                           "world": self.world, "train_samples": len(self.train_set), "model": self.manifest.uid,
                           "pretrained": self._pretrained_name,
                           "config": dataclasses.asdict(config)})

    def save(self, path):
        """Write the weights, optimizer state, alphabet and run state to ``path`` (rank 0 only)."""
        if self.rank != 0:
            return path
        bad = _first_non_finite((p.name, p) for p in self.train_cell.get_parameters())
        if bad is not None:
            self._diverged(f"{bad} became NaN or infinite")
        try:
            save_checkpoint(self.train_cell, path, metadata={ALPHABET_KEY: self.alphabet,
                                                             TRAIN_STATE_KEY: self.state_json()})
        except (OSError, RuntimeError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CnnctcError(f"cannot write the checkpoint {path} ({reason})") from None
        return path

    def save_periodic(self):
        """Save ``cnnctc-<step>.ckpt`` and remove all but the newest ``keep`` of them."""
        path = self.out_dir / f"cnnctc-{self.step:07d}.ckpt"
        with _interrupt_deferred():
            self.save(path)
            if self.rank == 0:  # keep the newest few, including those of an interrupted earlier run
                self._last_saved = path
                for old in step_checkpoints(self.out_dir)[:-self.config.keep]:
                    old.unlink(missing_ok=True)
        return path

    def _batches(self):
        order = epoch_order(len(self.train_set), seed=self.config.seed, epoch=self.epoch, start_step=self.epoch_step,
                            steps_per_epoch=self.steps_per_epoch, batch_size=self.config.batch_size,
                            rank=self.rank, world=self.world)
        return self.loader.batches(order)

    def run(self):
        """Check, build, resume, train to the planned step (validating every epoch); a FinetuneResult."""
        with _terminate_as_interrupt():
            self.device = configure_context(self.device_target)
            if not self._checked:
                self.check()
            try:
                return self._run()
            except BaseException:
                if self._created_out_dir:  # a run that failed before its first checkpoint leaves no trace
                    with contextlib.suppress(OSError):
                        self.out_dir.rmdir()  # only when still empty
                raise
            finally:
                if getattr(self, "loader", None) is not None:
                    self.loader.close()
                self.train_set.close()

    def _train_epoch(self):
        """The rest of the current epoch's steps (or up to the planned total), saving on schedule."""
        for images, targets, lengths in self._batches():
            self.train_step(ms.Tensor(images), ms.Tensor(targets), ms.Tensor(lengths))
            if self.step % self.config.save_every == 0 and self.step < self.total_steps:
                self.check_weights()
                self.save_periodic()
            if self.step >= self.total_steps:
                break

    def _run(self):
        self.build()
        self.resume()
        config = self.config
        log.info("training %d steps (%d per epoch), batch %d x %d workers, lr %g, warm-up %d, %s", self.total_steps,
                 self.steps_per_epoch, config.batch_size, self.world, config.lr, self.warmup, self.amp_level)
        self._first_step, self._started = self.step, time.monotonic()
        while self.step < self.total_steps:
            # A run saved (or stopped) right after an epoch's last step resumes with that epoch's
            # batches all done: it goes straight to the epoch's validation.
            if self.epoch_step < self.steps_per_epoch:
                self._train_epoch()
            if self.epoch_step >= self.steps_per_epoch or self.step >= self.total_steps:
                self.validate()
                if self.epoch_step >= self.steps_per_epoch:
                    self.epoch, self.epoch_step = self.epoch + 1, 0
        self.check_weights()
        last_path = self.save_periodic()
        if self.loader.corrupt:
            log.warning("%d corrupt training images were replaced by their neighbours", self.loader.corrupt)
        log.info("rank %d finished at step %d; weights digest %s", self.rank, self.step, _weights_digest(self.net))
        best_path = self.out_dir / "best.ckpt"
        return FinetuneResult(self.out_dir, self.step, last_path, best_path if best_path.exists() else last_path,
                              self.best, self.history)


def _counts(counter):
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counter.items())) or "none"


def finetune(train, valid, out_dir, *, pretrained="hub", config=None, resume=None, manifest=None, model=None,
             device_target=None, on_step=None, rank=None, world=None):
    """Fine-tune on LMDB datasets ``train`` (a path or a list) and validate on ``valid``.

    ``pretrained``: "hub" (the asset of ``model``, a registered uid, or of ``manifest``), another
    registered uid, a checkpoint path, or None. ``resume``: the directory of an earlier run, whose
    weights, optimizer state, step and data position continue from its newest checkpoint with
    the run's own settings (a setting in ``config`` that differs from both the recipe default and
    the run's is refused, as is resuming a finished run). ``rank``/``world``: this worker in a
    joined msrun cluster (default: the joined cluster, else a single process).

    Every setting and path is checked before the network is built; a loss or weights that
    become NaN or infinite stop the run with :class:`DivergenceError`, and no checkpoint is
    written with them. Checkpoints (hub format plus the alphabet and the run state) go to
    ``out_dir``: ``cnnctc-<step>.ckpt`` every ``save_every`` steps and at the end, and
    ``best.ckpt`` for the best validation accuracy. Returns a :class:`FinetuneResult`.
    """
    return Trainer(train, valid, out_dir, pretrained=pretrained, config=config, resume=resume, manifest=manifest,
                   model=model, device_target=device_target, on_step=on_step, rank=rank, world=world).run()
