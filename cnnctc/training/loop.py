"""The training loop: build the network and optimizer, resume, step, validate, save, in named steps.

:class:`Trainer` checks its :class:`~cnnctc.training.plan.RunPlan`, locks the run folder for
the whole run (rank 0, which alone writes), builds, resumes, and trains to the planned step,
validating every epoch and saving through its :class:`~cnnctc.training.store.CheckpointStore`.
"""
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path

from .._mindspore import mindspore as ms, network_run
from mindspore import nn

from .._signals import graph_call, terminate_as_interrupt
from ..batches import BatchLoader, WorkerDied, default_workers, epoch_order
from ..checkpoint import ALPHABET_KEY, load_weights
from ..errors import CheckpointError, CnnctcError
from ..evaluation import evaluate
from ..lineage import LINEAGE_KEY, cnnctc_version
from ..loader import configure_context
from ..recognizer import Recognizer
from ..registry import build_network
from .config import MAX_SKIPPED_STEPS, DivergenceError
from .plan import RunPlan, cluster_size
from .pretrained import load_pretrained
from .recipe import CTCLossCell, TrainStep, lr_schedule
from .store import TRAIN_STATE_KEY, CheckpointStore, RunFolderLock, first_non_finite, latest_checkpoint

__all__ = ["Trainer", "FinetuneResult", "VALIDATION_PROTOCOL"]

log = logging.getLogger(__name__)

# What validate() measures: the model zoo's evaluation rules (cnnctc.protocols), with the run's
# longest label in place of the zoo's 13.
VALIDATION_PROTOCOL = "zoo"


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


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


class Trainer:
    """One fine-tuning run, in named steps; :meth:`run` does them all and returns a FinetuneResult.

    The arguments are those of :func:`cnnctc.training.finetune`. Nothing heavy happens in the constructor.
    """

    def __init__(self, train, valid, out_dir, *, pretrained="hub", config=None, resume=None, manifest=None,
                 model=None, device_target=None, on_step=None, rank=None, world=None):
        self.plan = RunPlan(train, valid, out_dir, pretrained=pretrained, config=config, resume=resume,
                            manifest=manifest, model=model, rank=rank, world=world)
        self.out_dir = self.plan.out_dir
        self.device_target = device_target
        self.on_step = on_step
        self.store = None
        # Run state, saved in every checkpoint.
        self.step = self.epoch = self.epoch_step = 0
        self.best, self.best_step = -1.0, None
        self.history = []
        self._measured = None          # the newest validation: (step, accuracy, per-dataset results)
        self._skipped_in_a_row = 0
        self._compiled = False   # the training graph compiles at the first step
        self._lock = None

    # The plan's results, under the names the loop uses.
    config = property(lambda self: self.plan.config)
    alphabet = property(lambda self: self.plan.alphabet)
    rank = property(lambda self: self.plan.rank)
    world = property(lambda self: self.plan.world)
    total_steps = property(lambda self: self.plan.total_steps)
    steps_per_epoch = property(lambda self: self.plan.steps_per_epoch)

    def check(self):
        """Check every setting and path (see :meth:`RunPlan.check`); nothing is built."""
        self.plan.check()
        self.store = CheckpointStore(self.out_dir, self.config.keep)
        point = self.plan.resume
        if point is not None:
            self.step, self.epoch, self.epoch_step = point.step, point.epoch, point.epoch_step
            self.best = float(point.state.get("best_accuracy", -1.0))
            self.best_step = point.state.get("best_step")
            self.history = list(point.state.get("history", []))

    def set_rank(self, rank, world):
        """This worker's place in the joined cluster, after :meth:`check` (the world size it planned for)."""
        self.plan.set_rank(rank, world)

    # -- build and resume ------------------------------------------------------------------------------------

    def build(self):
        """The network (with the pretrained weights), the loss, the optimizer and the training cell."""
        config, plan = self.config, self.plan
        ms.set_seed(config.seed)
        if self.world > 1:
            joined = cluster_size()
            if joined != (self.rank, self.world):
                seen = "no cluster" if joined is None else f"rank {joined[0]} of {joined[1]}"
                raise CnnctcError(f"rank {self.rank} of {self.world} ranks needs a joined cluster of that size "
                                  f"(run under msrun); this process has {seen}")
            ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
        self.run_manifest = plan.manifest.replace(alphabet=self.alphabet,
                                                  lowercase_labels=self.alphabet == self.alphabet.lower())
        try:
            self.net = build_network(self.run_manifest, output_channel=config.output_channel)
        except (ValueError, TypeError) as exc:
            raise CnnctcError(f"cannot build the network: {exc}") from None
        if plan.pretrained is not None:
            load_pretrained(self.net, plan.pretrained, self.alphabet)
            plan.pretrained = None  # the weights are in the network now
        elif plan.resume is None:
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
        self.loader = BatchLoader(plan.train_set, config.workers or default_workers(self.world))
        self.reader = Recognizer(network=self.net, manifest=self.run_manifest, batch_size=min(config.batch_size, 64))
        self._trained_on = plan.trained_on()
        self._trained_on["recipe"].update(warmup_steps=self.warmup, amp_level=self.amp_level)  # as applied

    def resume(self):
        """Load the resumed run's weights and optimizer state (nothing to do for a new run)."""
        point = self.plan.resume
        if point is not None and point.contents is not None:
            load_weights(self.net, point.contents, source=str(point.path))
            names = {p.name for p in self.net.get_parameters()}
            optimizer_state = {k: v for k, v in point.contents.items() if not isinstance(v, str) and k not in names}
            # strict_load: a lax load matches names by suffix and would pour moment.X into X.
            ms.load_param_into_net(self.train_cell, optimizer_state, strict_load=True)
            point.contents = None  # loaded; the memory goes back
        bad = first_non_finite((p.name, p) for p in self.net.get_parameters())
        if bad is not None:
            raise CheckpointError(f"the starting weights hold NaN or infinite values ({bad})")
        self.train_cell.set_train(True)

    # -- the steps of a run ----------------------------------------------------------------------------------

    def train_step(self, images, targets, lengths):
        """One optimizer step on a batch; returns the loss.

        Raises DivergenceError when the loss is not finite, or when the gradients overflowed in
        MAX_SKIPPED_STEPS steps in a row (the loss has exploded and no step is applied any more).
        """
        with network_run():   # one MindSpore run at a time in the process; refused in a forked child
            if self._compiled:
                loss, overflow = self.train_cell(images, targets, lengths)
            else:   # the graph compiles now: MindSpore's own lines (e.g. its trace on Ctrl-C) stay off stderr
                with graph_call():
                    loss, overflow = self.train_cell(images, targets, lengths)
                self._compiled = True
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
            log.info("step %d/%d epoch %d loss %.4f lr %.3g%s (%.1f images/s per rank)", self.step,
                     self.total_steps, self.epoch + 1, value, self.schedule[self.step - 1],
                     " overflow: step skipped" if skipped else "", rate)
        return value

    def check_weights(self):
        """Raise DivergenceError if a weight or a batch-norm statistic is NaN or infinite."""
        bad = first_non_finite((p.name, p) for p in self.net.get_parameters())
        if bad is not None:
            self._diverged(f"the weights became NaN or infinite ({bad})")

    def _diverged(self, what):
        if self.rank != 0:
            where = "rank 0 keeps the checkpoints saved before"
        else:
            kept = self.store.last_saved or latest_checkpoint(self.out_dir)
            where = f"the checkpoints saved before are kept (newest: {kept})" if kept else "no checkpoint was written"
        raise DivergenceError(f"training diverged at step {self.step}: {what}; lower --lr (it was "
                              f"{self.config.lr:g}) and start again; {where}")

    def validate(self):
        """Validation accuracy (rank 0; None elsewhere or without --valid); saves best.ckpt when it improves."""
        self.check_weights()
        if not self.plan.valid_paths or self.rank != 0:
            return None
        self.net.set_train(False)
        try:
            results, total = evaluate(self.reader, self.plan.valid_paths, protocol=VALIDATION_PROTOCOL,
                                      max_length=self.config.max_length)
        finally:
            self.train_cell.set_train(True)
        self.history.append({"step": self.step, "epoch": self.epoch + 1, "accuracy": total.accuracy,
                             "norm_ed": total.norm_ed})
        self._measured = (self.step, total.accuracy, results)
        if total.accuracy is None:  # no sample kept: no accuracy to compare, and no best checkpoint
            log.warning("step %d epoch %d: no validation sample is kept under the %s rules (skipped: %s); no "
                        "accuracy measured", self.step, self.epoch + 1, VALIDATION_PROTOCOL,
                        ", ".join(f"{n} {why}" for why, n in sorted(total.skipped_by.items())) or "none")
            return None
        log.info("step %d epoch %d: validation accuracy %.2f%% (1-N.E.D. %.4f, %d samples)", self.step,
                 self.epoch + 1, total.accuracy, total.norm_ed, total.kept)
        if total.accuracy > self.best:
            self.best, self.best_step = total.accuracy, self.step
            self.save(self.out_dir / "best.ckpt")
        return total.accuracy

    def state_json(self):
        """The run's state as saved in its checkpoints (what --resume continues from)."""
        config = dataclasses.replace(self.config, alphabet=self.alphabet)
        return json.dumps({"step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
                           "total_steps": self.total_steps, "best_accuracy": self.best, "best_step": self.best_step,
                           "history": self.history, "world": self.world, "train_samples": len(self.plan.train_set),
                           "model": self.plan.manifest.uid, "pretrained": self.plan.pretrained_name,
                           "config": dataclasses.asdict(config)})

    def lineage(self):
        """These weights' lineage: what they started from, were trained on (to this step) and measured."""
        measured = None
        if self.plan.valid_paths:
            step, accuracy, results = self._measured or (None, None, [])
            measured = {"protocol": VALIDATION_PROTOCOL, "max_length": self.config.max_length,
                        "accuracy": accuracy if step == self.step else None,
                        "best_accuracy": self.best if self.best >= 0 else None, "best_step": self.best_step,
                        "datasets": [{"path": name, "kept": r.kept, "skipped": r.skipped}
                                     for name, r in zip(self.plan.valid_names, results)]}
        return {"origin": "finetune", "written_by": f"cnnctc {cnnctc_version()}",
                "started_from": self.plan.started_from, "trained_on": {**self._trained_on, "steps": self.step},
                "measured": measured}

    def _metadata(self):
        """What a checkpoint carries besides the weights; refuses to describe non-finite ones."""
        bad = first_non_finite((p.name, p) for p in self.train_cell.get_parameters())
        if bad is not None:
            self._diverged(f"{bad} became NaN or infinite")
        return {ALPHABET_KEY: self.alphabet, TRAIN_STATE_KEY: self.state_json(),
                LINEAGE_KEY: json.dumps(self.lineage(), ensure_ascii=False)}

    def save(self, path):
        """Write the weights, optimizer state, alphabet, run state and lineage to ``path`` (rank 0 only)."""
        if self.rank != 0:
            return path
        return self.store.save(self.train_cell, path, self._metadata())

    def save_periodic(self):
        """Save ``cnnctc-<step>.ckpt`` and remove all but the newest ``keep`` of them (rank 0 only)."""
        if self.rank != 0:
            return self.out_dir / f"cnnctc-{self.step:07d}.ckpt"
        return self.store.save_step(self.train_cell, self.step, self._metadata())

    def _batches(self):
        order = epoch_order(len(self.plan.train_set), seed=self.config.seed, epoch=self.epoch,
                            start_step=self.epoch_step, steps_per_epoch=self.steps_per_epoch,
                            batch_size=self.config.batch_size, rank=self.rank, world=self.world)
        return self.loader.batches(order)

    def run(self):
        """Check, lock, build, resume, train to the planned step (validating every epoch); a FinetuneResult."""
        with terminate_as_interrupt():
            self.device = configure_context(self.device_target)
            if not self.plan.checked:
                self.check()
            try:
                self._lock_out_dir()
                try:
                    return self._run()
                except BaseException:
                    if self.plan.created_out_dir and self._lock is not None:
                        with contextlib.suppress(OSError):  # a run that failed before its first checkpoint
                            self.out_dir.rmdir()            # leaves no trace (only when still empty)
                    raise
            except WorkerDied as exc:
                raise CnnctcError(f"{exc}; {self._how_to_go_on()}") from None
            finally:
                if self._lock is not None:
                    self._lock.release()
                if getattr(self, "loader", None) is not None:
                    self.loader.close()
                self.plan.train_set.close()

    def _how_to_go_on(self):
        """After a failure that running again fixes: the command that continues the run, as it now stands."""
        newest = latest_checkpoint(self.out_dir) if self.out_dir.is_dir() else None
        if newest is None:
            return (f"no checkpoint was saved yet (the first comes at step {self.config.save_every}), so run the "
                    "same command again")
        if self.plan.resume_dir is not None:
            return f"run the same command again to continue from {newest}"
        return f"run the same command with --resume {self.out_dir} added to continue from {newest}"

    def _lock_out_dir(self):
        """Rank 0 holds the run folder for the whole run, and checks it again under the lock."""
        if self.rank != 0:
            return
        self._lock = RunFolderLock(self.out_dir).acquire()
        self.plan.recheck_out_dir()
        self.store.remove_leftovers()
        if self.plan.resume is not None:
            self.store.adopt()

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
        # Two counts of processes, one word each: msrun's processes are ranks, --workers the loader's.
        log.info("training %d steps (%d per epoch), batch %d x %s, %s per rank, lr %g, warm-up %d, %s",
                 self.total_steps, self.steps_per_epoch, config.batch_size, _count(self.world, "rank"),
                 _count(self.loader.workers, "loader worker"), config.lr, self.warmup, self.amp_level)
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
