"""Fine-tune CNN-CTC with the official recipe, from the hub weights, on one machine or several.

Recipe (SPEC section 4): CTC loss over all 26 columns, centered RMSProp (momentum 0.8), a fixed
loss scale of 8096, linear warm-up from 1/16 of the base rate then half-cosine to 0, mixed
precision O2 where the device supports it. Data parallel under ``msrun``: each worker reads its
share of every global batch, gradients are averaged, rank 0 alone writes checkpoints.
"""
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import dataset as msds
from mindspore import nn, ops

from .checkpoint import ALPHABET_KEY, load_weights, read_checkpoint, save_checkpoint
from .data import LabelFilter, LmdbDataset
from .download import fetch
from .errors import CnnctcError
from .evaluation import evaluate
from .loader import configure_context
from .manifest import load_manifest
from .network import CNNCTC
from .recognizer import Recognizer
from .transforms import ImageError

__all__ = ["TrainConfig", "finetune", "init_from_pretrained", "lr_schedule", "CTCLossCell", "TrainStep",
           "latest_checkpoint", "TRAIN_STATE_KEY"]

log = logging.getLogger(__name__)

TRAIN_STATE_KEY = "cnnctc_train_state"
_CKPT_PATTERN = re.compile(r"^cnnctc-(\d+)\.ckpt$")


@dataclasses.dataclass
class TrainConfig:
    """Fine-tuning settings; the defaults are the official recipe of the hub checkpoint."""
    alphabet: str = None            # default: the pretrained checkpoint's (the manifest's)
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

    def construct(self, images, targets, lengths):
        loss = self.network(images, targets, lengths)
        sens = ops.fill(loss.dtype, loss.shape, self.scale)
        grads = self.grad(self.network, self.weights)(images, targets, lengths, sens)
        if self.reducer is not None:
            grads = self.reducer(grads)
        grads = tuple(g / self.scale.astype(g.dtype) for g in grads)
        finite = ms.amp.all_finite(grads)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
        return loss, ops.logical_not(finite)


class _TrainSource:
    """A dataset view for GeneratorDataset that replaces a corrupt image by the next readable one."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.corrupt = 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        for offset in range(len(self.dataset)):
            try:
                return self.dataset[(index + offset) % len(self.dataset)]
            except ImageError as exc:
                self.corrupt += 1
                log.warning("skipping a corrupt training image (%s)", exc)
        raise CnnctcError("no readable image in the training data")


def step_checkpoints(directory):
    """The ``cnnctc-<step>.ckpt`` files in ``directory``, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("cnnctc-*.ckpt")
             if (m := _CKPT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory):
    """The periodic checkpoint with the highest step in ``directory``, or None."""
    found = step_checkpoints(directory)
    return found[-1] if found else None


def _distributed():
    """(rank, world size); joins the msrun job when started by msrun.

    msrun runs the same command once more as the scheduler, whose init() serves the cluster
    and ends the process when the workers are done.
    """
    role = os.environ.get("MS_ROLE")
    if role in ("MS_WORKER", "MS_SCHED") and int(os.environ.get("MS_WORKER_NUM", "1")) > 1:
        from mindspore.communication import get_group_size, get_rank, init
        init()
        if role == "MS_SCHED":
            raise SystemExit(0)
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
        return get_rank(), get_group_size()
    return 0, 1


def _weights_digest(net):
    digest = hashlib.sha256()
    for p in net.trainable_params():
        digest.update(p.asnumpy().tobytes())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class FinetuneResult:
    out_dir: Path
    steps: int
    last_checkpoint: Path
    best_checkpoint: Path
    best_accuracy: float
    history: list


def init_from_pretrained(net, pretrained, manifest, alphabet):
    """Load the pretrained checkpoint into ``net``; the head only when the alphabet is the same."""
    if pretrained in (None, "none"):
        log.info("starting from random weights")
        return
    path = fetch(manifest) if pretrained == "hub" else Path(pretrained)
    state = read_checkpoint(path, weights_only=True)
    source_alphabet = state.get(ALPHABET_KEY) if isinstance(state.get(ALPHABET_KEY), str) else manifest.alphabet
    same_head = source_alphabet == alphabet
    load_weights(net, state, skip_prefixes=() if same_head else ("Prediction.",), source=str(path))
    log.info("initialised from %s (%s)", path, "all weights" if same_head else
             f"backbone only: the head is new for {len(alphabet) + 1} classes")


def _resume_point(directory):
    """(newest checkpoint, its contents, its training state) of the run in ``directory``."""
    last = latest_checkpoint(directory)
    if last is None:
        raise CnnctcError(f"{directory}: no cnnctc-<step>.ckpt checkpoint to resume from")
    state = read_checkpoint(last)
    try:
        return last, state, json.loads(state[TRAIN_STATE_KEY])
    except (KeyError, TypeError, ValueError):
        raise CnnctcError(f"{last}: not a cnnctc fine-tuning checkpoint (no training state)") from None


def _epoch_batches(source, *, seed, epoch, start_step, steps_per_epoch, batch_size, rank, world):
    """This worker's batches of one epoch from ``start_step`` on, as a MindSpore dataset.

    The epoch's order is a permutation seeded by (seed, epoch), so a resumed run continues at
    the same place; step k of the epoch gives worker r rows [(k * world + r) * batch_size ...].
    """
    order = np.random.default_rng(seed + epoch).permutation(len(source))
    usable = order[:steps_per_epoch * world * batch_size].reshape(steps_per_epoch, world, batch_size)
    indices = usable[start_step:, rank, :].reshape(-1).tolist()
    dataset = msds.GeneratorDataset(source, column_names=["image", "target", "length"], sampler=indices,
                                    shuffle=False, num_parallel_workers=1, python_multiprocessing=False)
    return dataset.batch(batch_size, drop_remainder=True)


def finetune(train, valid, out_dir, *, pretrained="hub", config=None, resume=None, manifest=None,
             device_target=None, on_step=None):
    """Fine-tune on LMDB datasets ``train`` (a path or a list) and validate on ``valid``.

    ``pretrained`` is "hub" (the manifest's verified asset), a checkpoint path, or None.
    ``resume`` is a directory of an earlier run: weights, optimizer state, step and data
    position continue from its latest checkpoint. Checkpoints (hub format plus the alphabet)
    go to ``out_dir``: ``cnnctc-<step>.ckpt`` every ``save_every`` steps and at the end, and
    ``best.ckpt`` for the best validation accuracy. Returns a :class:`FinetuneResult`.
    """
    config = dataclasses.replace(config or TrainConfig())
    manifest = load_manifest(manifest)
    out_dir = Path(out_dir)
    device = configure_context(device_target)  # before joining a cluster: MindSpore fixes the device then
    rank, world = _distributed()

    if not resume and out_dir.is_dir() and step_checkpoints(out_dir):
        raise CnnctcError(f"{out_dir} already holds the checkpoints of a run; continue it with --resume "
                          f"{out_dir}, or choose another --out")
    last, resume_state, train_state = None, None, {}
    if resume:
        last, resume_state, train_state = _resume_point(resume)
        # The run continues with its own settings; only how often it logs and saves may change.
        config = dataclasses.replace(TrainConfig(**train_state["config"]), steps=train_state["total_steps"],
                                     save_every=config.save_every, keep=config.keep, log_every=config.log_every)
        log.info("resuming from %s at step %d", last, train_state["step"])
    ms.set_seed(config.seed)
    alphabet = config.alphabet or manifest.alphabet
    if len(set(alphabet)) != len(alphabet):
        raise CnnctcError("the alphabet repeats a character")
    label_filter = LabelFilter.for_alphabet(alphabet, config.max_length)
    train_set = LmdbDataset([train] if isinstance(train, (str, os.PathLike)) else train, label_filter,
                            preprocess_config=manifest.preprocess)
    if train_set.skipped:
        log.info("training data: %d kept, skipped %s", len(train_set), dict(train_set.skipped))
    global_batch = config.batch_size * world
    steps_per_epoch = len(train_set) // global_batch
    if steps_per_epoch == 0:
        raise CnnctcError(f"{len(train_set)} usable training samples are fewer than one batch "
                          f"({config.batch_size} x {world} workers)")
    total_steps = config.steps or config.epochs * steps_per_epoch
    warmup = min(config.warmup_steps, max(1, total_steps // 10))

    net = CNNCTC(num_class=len(alphabet) + 1, output_channel=config.output_channel)
    net.alphabet = alphabet
    if resume_state is None:
        init_from_pretrained(net, pretrained, manifest, alphabet)
    amp_level = config.amp_level or ("O0" if device == "CPU" else "O2")
    if amp_level != "O0":
        ms.amp.auto_mixed_precision(net, amp_level)
    loss_net = CTCLossCell(net, blank=len(alphabet))
    schedule = lr_schedule(total_steps, config.lr, warmup, config.warmup_start)
    optimizer = nn.RMSProp(net.trainable_params(), learning_rate=ms.Tensor(schedule), decay=0.9,
                           momentum=config.momentum, epsilon=1e-10, centered=True)
    train_cell = TrainStep(loss_net, optimizer, config.loss_scale, world)
    if resume_state is not None:
        load_weights(net, resume_state, source=str(last))
        optimizer_state = {k: v for k, v in resume_state.items()
                           if not isinstance(v, str) and k not in {p.name for p in net.get_parameters()}}
        # strict_load: a lax load matches names by suffix and would pour moment.X into X.
        ms.load_param_into_net(train_cell, optimizer_state, strict_load=True)
    train_cell.set_train(True)

    step = train_state.get("step", 0)
    epoch = train_state.get("epoch", 0)
    epoch_step = train_state.get("epoch_step", 0)
    best = train_state.get("best_accuracy", -1.0)
    history = train_state.get("history", [])
    source = _TrainSource(train_set)
    reader = Recognizer(network=net, manifest=manifest, batch_size=min(config.batch_size, 64))
    valid_paths = [valid] if isinstance(valid, (str, os.PathLike)) else list(valid or [])

    def state_json():
        return json.dumps({"step": step, "epoch": epoch, "epoch_step": epoch_step, "total_steps": total_steps,
                           "best_accuracy": best, "history": history, "world": world,
                           "config": dataclasses.asdict(dataclasses.replace(config, alphabet=alphabet))})

    def save(path):
        if rank == 0:
            save_checkpoint(train_cell, path, metadata={ALPHABET_KEY: alphabet, TRAIN_STATE_KEY: state_json()})
        return path

    def save_periodic():
        path = save(out_dir / f"cnnctc-{step:07d}.ckpt")
        if rank == 0:  # keep the newest few, including those of an interrupted earlier run
            for old in step_checkpoints(out_dir)[:-config.keep]:
                old.unlink(missing_ok=True)
        return path

    def validate():
        nonlocal best
        if not valid_paths or rank != 0:
            return None
        net.set_train(False)
        _, total = evaluate(reader, valid_paths, max_length=config.max_length)
        train_cell.set_train(True)
        history.append({"step": step, "epoch": epoch + 1, "accuracy": total.accuracy, "norm_ed": total.norm_ed})
        log.info("step %d epoch %d: validation accuracy %.2f%% (1-N.E.D. %.4f, %d samples)", step, epoch + 1,
                 total.accuracy, total.norm_ed, total.kept)
        if total.accuracy > best:
            best = total.accuracy
            save(out_dir / "best.ckpt")
        return total.accuracy

    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    log.info("training %d steps (%d per epoch), batch %d x %d workers, lr %g, warm-up %d, %s", total_steps,
             steps_per_epoch, config.batch_size, world, config.lr, warmup, amp_level)
    started = time.monotonic()
    while step < total_steps:
        dataset = _epoch_batches(source, seed=config.seed, epoch=epoch, start_step=epoch_step,
                                 steps_per_epoch=steps_per_epoch, batch_size=config.batch_size, rank=rank,
                                 world=world)
        for images, targets, lengths in dataset.create_tuple_iterator(num_epochs=1):
            loss, overflow = train_cell(images, targets, lengths)
            step += 1
            epoch_step += 1
            if on_step:
                on_step(step, float(loss.asnumpy()))
            if step % config.log_every == 0 or step == total_steps:
                rate = (step - train_state.get("step", 0)) * config.batch_size / (time.monotonic() - started)
                log.info("step %d/%d epoch %d loss %.4f lr %.3g%s (%.1f images/s per worker)", step, total_steps,
                         epoch + 1, float(loss.asnumpy()), schedule[step - 1],
                         " overflow: step skipped" if bool(overflow.asnumpy()) else "", rate)
            if step % config.save_every == 0 and step < total_steps:
                save_periodic()
            if step >= total_steps:
                break
        if epoch_step >= steps_per_epoch or step >= total_steps:
            validate()
            if epoch_step >= steps_per_epoch:
                epoch, epoch_step = epoch + 1, 0
    last_path = save_periodic()
    if source.corrupt:
        log.warning("%d corrupt training images were replaced by their neighbours", source.corrupt)
    log.info("rank %d finished at step %d; weights digest %s", rank, step, _weights_digest(net))
    best_path = out_dir / "best.ckpt"
    return FinetuneResult(out_dir, step, last_path, best_path if best_path.exists() else last_path, best, history)
