"""The step loop of a run: each epoch's batches in their seeded order, one optimizer step each,
checked for divergence, with the checkpoints and validations due on the way (:mod:`.saving`)."""
import hashlib
import logging
import math
import time

from .._mindspore import mindspore as ms, network_run
from .._signals import graph_call
from ..batches import epoch_order
from .config import MAX_SKIPPED_STEPS

__all__ = ["StepLoop"]

log = logging.getLogger(__name__)


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _weights_digest(net):
    digest = hashlib.sha256()
    for p in net.trainable_params():
        digest.update(p.asnumpy().tobytes())
    return digest.hexdigest()[:16]


class StepLoop:
    """Trains a built run (``built``) from its ``progress`` to the plan's last step; ``on_step(step,
    loss)`` is called after every step."""

    def __init__(self, plan, built, progress, saver, on_step=None):
        self.plan, self.built, self.progress, self.saver, self.on_step = plan, built, progress, saver, on_step
        self._skipped_in_a_row = 0
        self._compiled = False   # the training graph compiles at the first step

    def train_step(self, images, targets, lengths):
        """One optimizer step on a batch; returns the loss.

        Raises DivergenceError when the loss is not finite, or when the gradients overflowed in
        MAX_SKIPPED_STEPS steps in a row (the loss has exploded and no step is applied any more).
        """
        train_cell, progress, plan = self.built.train_cell, self.progress, self.plan
        with network_run():   # one MindSpore run at a time in the process; refused in a forked child
            if self._compiled:
                loss, overflow = train_cell(images, targets, lengths)
            else:   # the graph compiles now: MindSpore's own lines (e.g. its trace on Ctrl-C) stay off stderr
                with graph_call():
                    loss, overflow = train_cell(images, targets, lengths)
                self._compiled = True
        progress.step += 1
        progress.epoch_step += 1
        value = float(loss.asnumpy())
        skipped = bool(overflow.asnumpy())
        if not math.isfinite(value):
            self.saver.diverged(f"the loss became {value}")
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if skipped else 0
        if self._skipped_in_a_row >= MAX_SKIPPED_STEPS:
            self.saver.diverged(f"the gradients overflowed in {self._skipped_in_a_row} steps in a row, so none was "
                                f"applied (loss {value:.4g})")
        if self.on_step:
            self.on_step(progress.step, value)
        if progress.step % plan.config.log_every == 0 or progress.step == plan.total_steps:
            self.saver.check_weights()
            rate = (progress.step - self._first_step) * plan.config.batch_size / (time.monotonic() - self._started)
            log.info("step %d/%d epoch %d loss %.4f lr %.3g%s (%.1f images/s per rank)", progress.step,
                     plan.total_steps, progress.epoch + 1, value, self.built.schedule[progress.step - 1],
                     " overflow: step skipped" if skipped else "", rate)
        return value

    def _batches(self):
        plan, progress = self.plan, self.progress
        order = epoch_order(len(plan.train_set), seed=plan.config.seed, epoch=progress.epoch,
                            start_step=progress.epoch_step, steps_per_epoch=plan.steps_per_epoch,
                            batch_size=plan.config.batch_size, rank=plan.rank, world=plan.world)
        return self.built.loader.batches(order)

    def _train_epoch(self):
        """The rest of the current epoch's steps (or up to the planned total), saving on schedule."""
        plan, progress = self.plan, self.progress
        for images, targets, lengths in self._batches():
            self.train_step(ms.Tensor(images), ms.Tensor(targets), ms.Tensor(lengths))
            if progress.step % plan.config.save_every == 0 and progress.step < plan.total_steps:
                self.saver.check_weights()
                self.saver.save_periodic()
            if progress.step >= plan.total_steps:
                break

    def train(self):
        """Train to the planned step, validating at the end of every epoch; the last checkpoint's path."""
        plan, config, built, progress = self.plan, self.plan.config, self.built, self.progress
        # Two counts of processes, one word each: msrun's processes are ranks, --workers the loader's.
        log.info("training %d steps (%d per epoch), batch %d x %s, %s per rank, lr %g, warm-up %d, %s",
                 plan.total_steps, plan.steps_per_epoch, config.batch_size, _count(plan.world, "rank"),
                 _count(built.loader.workers, "loader worker"), config.lr, built.warmup, built.amp_level)
        self._first_step, self._started = progress.step, time.monotonic()
        while progress.step < plan.total_steps:
            # A run saved (or stopped) right after an epoch's last step resumes with that epoch's
            # batches all done: it goes straight to the epoch's validation.
            if progress.epoch_step < plan.steps_per_epoch:
                self._train_epoch()
            if progress.epoch_step >= plan.steps_per_epoch or progress.step >= plan.total_steps:
                self.saver.validate()
                if progress.epoch_step >= plan.steps_per_epoch:
                    progress.epoch, progress.epoch_step = progress.epoch + 1, 0
        self.saver.check_weights()
        last_path = self.saver.save_periodic()
        if built.loader.corrupt:
            log.warning("%d corrupt training images were replaced by their neighbours", built.loader.corrupt)
        log.info("rank %d finished at step %d; weights digest %s", plan.rank, progress.step,
                 _weights_digest(built.net))
        return last_path
