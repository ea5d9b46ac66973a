"""What a run writes, and when: rank 0 validates at the end of every epoch and writes ``best.ckpt``
when the accuracy improves, and ``cnnctc-<step>.ckpt`` on schedule, each with the run's progress
and its weights' lineage (:mod:`.progress`), through the run folder's
:class:`~cnnctc.training.store.CheckpointStore`. Weights that are not finite are never written: the
run stops with :class:`~cnnctc.training.config.DivergenceError`, naming the checkpoint kept before."""
from ..evaluation import evaluate
from .config import DivergenceError
from .progress import VALIDATION_PROTOCOL
from .store import first_non_finite, latest_checkpoint

__all__ = ["Saver"]


class Saver:
    """The validations and checkpoints of a built run (``built``, from :func:`~.build.build_run`)."""

    def __init__(self, plan, store, built, progress):
        self.plan, self.store, self.built, self.progress = plan, store, built, progress

    def check_weights(self):
        """Raise DivergenceError if a weight or a batch-norm statistic is NaN or infinite."""
        bad = first_non_finite((p.name, p) for p in self.built.net.get_parameters())
        if bad is not None:
            self.diverged(f"the weights became NaN or infinite ({bad})")

    def diverged(self, what):
        """Stop the run: a DivergenceError saying ``what`` and which checkpoints are kept."""
        plan = self.plan
        if plan.rank != 0:
            where = "rank 0 keeps the checkpoints saved before"
        else:
            kept = self.store.last_saved or latest_checkpoint(plan.out_dir)
            where = f"the checkpoints saved before are kept (newest: {kept})" if kept else "no checkpoint was written"
        raise DivergenceError(f"training diverged at step {self.progress.step}: {what}; lower --lr (it was "
                              f"{plan.config.lr:g}) and start again; {where}")

    def validate(self):
        """Validation accuracy (rank 0; None elsewhere or without --valid); saves best.ckpt when it improves."""
        self.check_weights()
        plan, built = self.plan, self.built
        if not plan.valid_paths or plan.rank != 0:
            return None
        built.net.set_train(False)
        try:
            # ranks=None: rank 0 validates alone (under msrun the others are training, and the
            # master port belongs to MindSpore's cluster, not to a reading relay)
            results, total = evaluate(built.reader, plan.valid_paths, protocol=VALIDATION_PROTOCOL,
                                      max_length=plan.config.max_length, ranks=None)
        finally:
            built.train_cell.set_train(True)
        if self.progress.validated(total, results):
            self.save(plan.out_dir / "best.ckpt")
        return total.accuracy

    def metadata(self):
        """What a checkpoint carries besides the weights; refuses to describe non-finite ones."""
        bad = first_non_finite((p.name, p) for p in self.built.train_cell.get_parameters())
        if bad is not None:
            self.diverged(f"{bad} became NaN or infinite")
        return self.progress.metadata(self.plan, self.built.trained_on)

    def save(self, path):
        """Write the weights, optimizer state, alphabet, run state and lineage to ``path`` (rank 0 only)."""
        if self.plan.rank != 0:
            return path
        return self.store.save(self.built.train_cell, path, self.metadata())

    def save_periodic(self):
        """Save ``cnnctc-<step>.ckpt`` and remove all but the newest ``keep`` of them (rank 0 only)."""
        if self.plan.rank != 0:
            return self.plan.out_dir / f"cnnctc-{self.progress.step:07d}.ckpt"
        return self.store.save_step(self.built.train_cell, self.progress.step, self.metadata())
