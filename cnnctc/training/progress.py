"""Where a fine-tuning run stands (its step, epoch, best validation and history) and what each of its
checkpoints carries besides the weights: the alphabet, that state (what ``--resume`` continues
from) and the weights' lineage."""
import dataclasses
import json
import logging

from ..lineage import cnnctc_version
from ..model_files import ALPHABET_KEY, LINEAGE_KEY
from .store import TRAIN_STATE_KEY

__all__ = ["Progress", "VALIDATION_PROTOCOL"]

log = logging.getLogger(__name__)

# What validation measures: the model zoo's evaluation rules (cnnctc.protocols), with the run's
# longest label in place of the zoo's 13.
VALIDATION_PROTOCOL = "zoo"


@dataclasses.dataclass
class Progress:
    """A run's state, saved in every checkpoint; a resumed run starts from its checkpoint's."""
    step: int = 0
    epoch: int = 0
    epoch_step: int = 0
    best: float = -1.0
    best_step: int = None
    history: list = dataclasses.field(default_factory=list)
    measured: tuple = None   # the newest validation: (step, accuracy, per-dataset results)

    @classmethod
    def resumed_from(cls, point):
        """The state saved in the checkpoint that ``point`` (a resume point) continues from."""
        return cls(point.step, point.epoch, point.epoch_step, float(point.state.get("best_accuracy", -1.0)),
                   point.state.get("best_step"), list(point.state.get("history", [])))

    def validated(self, total, results):
        """Record the validation just made at this step; True when its accuracy is the run's best so far."""
        self.history.append({"step": self.step, "epoch": self.epoch + 1, "accuracy": total.accuracy,
                             "norm_ed": total.norm_ed})
        self.measured = (self.step, total.accuracy, results)
        if total.accuracy is None:  # no sample kept: no accuracy to compare, and no best checkpoint
            log.warning("step %d epoch %d: no validation sample is kept under the %s rules (skipped: %s); no "
                        "accuracy measured", self.step, self.epoch + 1, VALIDATION_PROTOCOL,
                        ", ".join(f"{n} {why}" for why, n in sorted(total.skipped_by.items())) or "none")
            return False
        log.info("step %d epoch %d: validation accuracy %.2f%% (1-N.E.D. %.4f, %d samples)", self.step,
                 self.epoch + 1, total.accuracy, total.norm_ed, total.kept)
        if total.accuracy > self.best:
            self.best, self.best_step = total.accuracy, self.step
            return True
        return False

    def state_json(self, plan):
        """The run's state as saved in its checkpoints (what --resume continues from)."""
        config = dataclasses.replace(plan.config, alphabet=plan.alphabet)
        return json.dumps({"step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
                           "total_steps": plan.total_steps, "best_accuracy": self.best, "best_step": self.best_step,
                           "history": self.history, "world": plan.world, "train_samples": len(plan.train_set),
                           "model": plan.manifest.uid, "pretrained": plan.pretrained_name,
                           "config": dataclasses.asdict(config)})

    def lineage(self, plan, trained_on):
        """The weights' lineage at this step: what they started from, were trained on and measured."""
        measured = None
        if plan.valid_paths:
            step, accuracy, results = self.measured or (None, None, [])
            measured = {"protocol": VALIDATION_PROTOCOL, "max_length": plan.config.max_length,
                        "accuracy": accuracy if step == self.step else None,
                        "best_accuracy": self.best if self.best >= 0 else None, "best_step": self.best_step,
                        "datasets": [{"path": name, "kept": r.kept, "skipped": r.skipped}
                                     for name, r in zip(plan.valid_names, results)]}
        return {"origin": "finetune", "written_by": f"cnnctc {cnnctc_version()}",
                "started_from": plan.started_from, "trained_on": {**trained_on, "steps": self.step},
                "measured": measured}

    def metadata(self, plan, trained_on):
        """What a checkpoint written at this step carries besides the weights."""
        return {ALPHABET_KEY: plan.alphabet, TRAIN_STATE_KEY: self.state_json(plan),
                LINEAGE_KEY: json.dumps(self.lineage(plan, trained_on), ensure_ascii=False)}
