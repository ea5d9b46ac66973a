"""The training loop: a run in named steps.

:class:`Trainer` checks its :class:`~cnnctc.training.plan.RunPlan`, locks the run folder for
the whole run (rank 0, which alone writes), builds what the run trains with (:mod:`.build`),
resumes, and trains to the planned step (:mod:`.steps`), validating every epoch and saving its
:class:`~cnnctc.training.progress.Progress` with the weights (:mod:`.saving`) through its
:class:`~cnnctc.training.store.CheckpointStore`.
"""
import contextlib
import dataclasses
from pathlib import Path

from .._signals import terminate_as_interrupt
from ..batches import WorkerDied
from ..errors import CnnctcError
from ..loader import configure_context
from .build import build_run, load_resume_point
from .plan import RunPlan
from .progress import VALIDATION_PROTOCOL, Progress
from .saving import Saver
from .steps import StepLoop
from .store import CheckpointStore, RunFolderLock, latest_checkpoint

__all__ = ["Trainer", "FinetuneResult", "VALIDATION_PROTOCOL"]


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
        self.progress = Progress()   # the run's state, saved in every checkpoint
        self.built = None            # what the run trains with, and the parts that train and save it
        self.saver = self.steps = None
        self._lock = None

    # The plan's results (and the network being trained), under the trainer's names.
    config = property(lambda self: self.plan.config)
    alphabet = property(lambda self: self.plan.alphabet)
    rank = property(lambda self: self.plan.rank)
    world = property(lambda self: self.plan.world)
    total_steps = property(lambda self: self.plan.total_steps)
    steps_per_epoch = property(lambda self: self.plan.steps_per_epoch)
    net = property(lambda self: self.built.net)

    def check(self):
        """Check every setting and path (see :meth:`RunPlan.check`); nothing is built."""
        self.plan.check()
        self.store = CheckpointStore(self.out_dir, self.config.keep)
        if self.plan.resume is not None:
            self.progress = Progress.resumed_from(self.plan.resume)

    def set_rank(self, rank, world):
        """This worker's place in the joined cluster, after :meth:`check` (the world size it planned for)."""
        self.plan.set_rank(rank, world)

    def build(self):
        """The network (with the pretrained weights), the loss, the optimizer and the training cell."""
        self.built = build_run(self.plan, self.device)
        self.saver = Saver(self.plan, self.store, self.built, self.progress)
        self.steps = StepLoop(self.plan, self.built, self.progress, self.saver, self.on_step)

    def resume(self):
        """Load the resumed run's weights and optimizer state (nothing to do for a new run)."""
        load_resume_point(self.built, self.plan.resume)

    # -- the steps of a built run, each done by the part that owns it ------------------------------------------

    def train_step(self, images, targets, lengths):
        """One optimizer step on a batch; returns the loss (:meth:`.steps.StepLoop.train_step`)."""
        return self.steps.train_step(images, targets, lengths)

    def check_weights(self):
        """DivergenceError unless every weight is finite (:meth:`.saving.Saver.check_weights`)."""
        self.saver.check_weights()

    def validate(self):
        """The validation accuracy now, best.ckpt saved when it improved (:meth:`.saving.Saver.validate`)."""
        return self.saver.validate()

    def state_json(self):
        """The run's state as its checkpoints hold it (:meth:`.progress.Progress.state_json`)."""
        return self.progress.state_json(self.plan)

    def lineage(self):
        """The lineage of the weights at this step (:meth:`.progress.Progress.lineage`)."""
        return self.progress.lineage(self.plan, self.built.trained_on)

    def save(self, path):
        """A checkpoint of this step at ``path``, on rank 0 (:meth:`.saving.Saver.save`)."""
        return self.saver.save(path)

    def save_periodic(self):
        """This step's ``cnnctc-<step>.ckpt``, on rank 0 (:meth:`.saving.Saver.save_periodic`)."""
        return self.saver.save_periodic()

    # -- the whole run ---------------------------------------------------------------------------------------

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
                if self.built is not None:
                    self.built.loader.close()
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

    def _run(self):
        self.build()
        self.resume()
        last_path = self.steps.train()
        best_path = self.out_dir / "best.ckpt"
        return FinetuneResult(self.out_dir, self.progress.step, last_path,
                              best_path if best_path.exists() else last_path, self.progress.best,
                              self.progress.history)
