"""Argument checks shared by the Python API: numpy integers count as integers, bools do not."""
import numbers

from .errors import CnnctcError, shown

__all__ = ["positive_int", "device_name", "output_channel_problem", "DEVICES"]

DEVICES = ("Ascend", "GPU", "CPU")  # the device targets MindSpore takes

# Sizes a caller can ask for, bounded to what can run (and said so when refused). Here, with no
# numpy or Pillow import, so that the command line states them without loading either.
MAX_BEAM_WIDTH = 4096    # prefixes a beam keeps; each column scores width x classes extensions per image
MAX_TOP_K = 4096         # readings reported per image
MAX_WORD_LENGTH = 256    # symbols in a lexicon word: a CTC word needs a column per symbol (cnnctc has 26)
MAX_SCENE_WORKERS = 64  # drawing processes of one scene render
MAX_RENDER_COUNT = 1_000_000  # images one render may draw (about 2 GB of PNGs)
MAX_LABEL_LENGTH = MAX_WORD_LENGTH  # eval --max-length: a label that long could never be read anyway
MAX_EVAL_BATCH = 4096  # eval --drop-last: the largest batch an evaluation script could have used
MAX_CALIBRATION_IMAGES = 100_000  # quantize holds them all, preprocessed (1.3 GB of float32 at the bound)
# Fine-tuning: bounds that keep a typo from allocating the learning-rate table or a batch beyond memory.
MAX_STEPS = 10_000_000
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4096
MAX_LR = 1e30  # the schedule is float32: a larger rate would overflow it
MIN_LR = 1.2e-38  # and a smaller one would be 0 there (float32's smallest normal number)
# Twice the published width: four times its weights (about 700 MB in float32, 3.5 GB with the
# gradients and optimizer state). 16384 made MindSpore abort the interpreter ("Fatal Python error").
MAX_OUTPUT_CHANNEL = 1024


def output_channel_problem(value):
    """Why ``value`` cannot be a width to train (a multiple of 16 up to MAX_OUTPUT_CHANNEL), or None."""
    if not isinstance(value, bool) and isinstance(value, numbers.Integral) and value > MAX_OUTPUT_CHANNEL:
        return (f"must be at most {MAX_OUTPUT_CHANNEL} (twice the published 512; a wider network does not fit "
                f"a machine's memory), got {value}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 16 or value % 16:
        return f"must be a positive multiple of 16 (512 is the published width), got {shown(value)}"
    return None


def positive_int(value, name, *, upper=None):
    """``value`` as an int >= 1 (and <= ``upper``), or a CnnctcError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CnnctcError(f"{name} must be a positive integer, got {shown(value)}")
    value = int(value)
    if value < 1 or (upper is not None and value > upper):
        bound = f" at most {upper}" if upper is not None else ""
        raise CnnctcError(f"{name} must be a positive integer{bound}, got {value}")
    return value


def device_name(device_target):
    """``device_target`` spelled as MindSpore takes it (any case accepted), or a one-line error."""
    if not isinstance(device_target, str):
        raise TypeError(f"device_target must be one of {', '.join(DEVICES)} (a str), got "
                        f"{type(device_target).__name__}")
    for name in DEVICES:
        if device_target.lower() == name.lower():
            return name
    raise CnnctcError(f"unknown device target {shown(device_target)}; use one of {', '.join(DEVICES)}")
