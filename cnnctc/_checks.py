"""Argument checks shared by the Python API: numpy integers count as integers, bools do not."""
import numbers

from .errors import CnnctcError

__all__ = ["positive_int"]


def positive_int(value, name, *, upper=None):
    """``value`` as an int >= 1 (and <= ``upper``), or a CnnctcError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CnnctcError(f"{name} must be a positive integer, got {value!r}")
    value = int(value)
    if value < 1 or (upper is not None and value > upper):
        bound = f" at most {upper}" if upper is not None else ""
        raise CnnctcError(f"{name} must be a positive integer{bound}, got {value}")
    return value
