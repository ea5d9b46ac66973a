"""The settings of a fine-tuning run and their bounds: :class:`TrainConfig` (no MindSpore here)."""
import dataclasses
import math
import numbers

from .._checks import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LR, MIN_LR, MAX_OUTPUT_CHANNEL, MAX_STEPS, output_channel_problem
from ..errors import CnnctcError, shown

__all__ = ["TrainConfig", "DivergenceError", "check_alphabet", "MAX_STEPS", "MAX_EPOCHS", "MAX_BATCH_SIZE",
           "MAX_OUTPUT_CHANNEL", "MAX_SKIPPED_STEPS", "RUN_FIELDS"]

# A run whose gradients overflow this many steps in a row learns nothing: every step is skipped.
MAX_SKIPPED_STEPS = 20
_AMP_LEVELS = (None, "O0", "O1", "O2", "O3")
# Settings that define a run; on --resume they come from the run's checkpoint and may not change.
RUN_FIELDS = ("alphabet", "epochs", "steps", "batch_size", "lr", "warmup_steps", "warmup_start", "momentum",
              "loss_scale", "amp_level", "max_length", "output_channel", "seed")


class DivergenceError(CnnctcError):
    """The loss or the weights became NaN or infinite, or every step overflowed; the run stopped
    without saving them."""


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def flag(name):
    """The command-line option of a setting: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_alphabet(alphabet, what="--alphabet"):
    """Raise CnnctcError unless ``alphabet`` is a non-empty string of distinct, printable-line symbols."""
    from ..alphabet import check_alphabet as shared_check_alphabet  # the one check every reader uses
    shared_check_alphabet(alphabet, what, CnnctcError)


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
    output_channel: int = None      # default: the pretrained weights' width (from random weights, the model's: 512)
    seed: int = 1
    log_every: int = 50
    workers: int = None             # data-loading processes (default: the cores divided by the ranks)

    def check(self):
        """Raise CnnctcError naming the first setting out of its range (nothing is built)."""
        def integer(name, low, high=None):
            value = getattr(self, name)
            if not is_int(value) or value < low or (high is not None and value > high):
                bound = f"from {low} to {high}" if high is not None else f"at least {low}"
                raise CnnctcError(f"{flag(name)} must be an integer {bound}, got {shown(value)}")

        def real(name, low, high=None, *, low_open=True, high_open=False):
            value = getattr(self, name)
            ok = _is_real(value) and math.isfinite(value) and (value > low if low_open else value >= low) and (
                high is None or (value < high if high_open else value <= high))
            if not ok:
                limits = f"{'above' if low_open else 'at least'} {low:g}"
                if high is not None:
                    limits += f" and {'below' if high_open else 'at most'} {high:g}"
                raise CnnctcError(f"{flag(name)} must be a finite number {limits}, got {shown(value)}")

        if self.alphabet is not None:
            check_alphabet(self.alphabet)
        integer("epochs", 1, MAX_EPOCHS)
        if self.steps is not None:
            integer("steps", 1, MAX_STEPS)
        integer("batch_size", 1, MAX_BATCH_SIZE)
        real("lr", MIN_LR, MAX_LR, low_open=False)
        integer("warmup_steps", 0)
        real("warmup_start", 0, 1)
        real("momentum", 0, 1, low_open=False, high_open=True)
        real("loss_scale", 0)
        if self.amp_level not in _AMP_LEVELS:
            raise CnnctcError(f"amp_level must be one of O0, O1, O2, O3 (or None for the device's), "
                              f"got {shown(self.amp_level)}")
        integer("save_every", 1)
        integer("keep", 1)
        integer("max_length", 1)
        problem = None if self.output_channel is None else output_channel_problem(self.output_channel)
        if problem:
            raise CnnctcError(f"--output-channel {problem}")
        integer("seed", 0, 2 ** 32 - 1)
        integer("log_every", 1)
        if self.workers is not None:
            from ..batches import MAX_WORKERS
            integer("workers", 1, MAX_WORKERS)
