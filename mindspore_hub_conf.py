"""MindSpore Hub entry point: the hub imports this file by path and calls ``create_network``."""
from cnnctc.loader import create_network  # noqa: F401  (the hub looks this name up)
