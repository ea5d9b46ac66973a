"""The fine-tuning API under its first name: everything lives in :mod:`cnnctc.training`."""
from .training import *  # noqa: F401,F403
from .training import __all__  # noqa: F401
