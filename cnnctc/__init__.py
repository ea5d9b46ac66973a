"""CNN-CTC scene-text recognition for MindSpore, compatible with ``mindspore/1.3/cnnctc_mjstiiit``.

Importing the package is cheap: MindSpore is imported only when a name that needs it is used.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "CNNCTC": "network",
    "load": "loader",
    "create_network": "loader",
    "load_manifest": "manifest",
    "Manifest": "manifest",
    "fetch": "download",
    "verify_file": "download",
    "preprocess": "transforms",
    "Recognizer": "recognizer",
    "Prediction": "decoding",
    "ctc_greedy_decode": "decoding",
    "finetune": "train",
    "TrainConfig": "train",
    "evaluate": "evaluation",
    "make_lmdb": "data",
    "render_word": "render",
    "CnnctcError": "errors",
    "IntegrityError": "errors",
    "CheckpointError": "errors",
    "DownloadError": "errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnctc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
