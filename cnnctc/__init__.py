"""CNN-CTC scene-text recognition for MindSpore, compatible with every hub version of
``cnnctc_mjstiiit`` (``mindspore/1.3`` to ``mindspore/1.10``).

Importing the package is cheap: MindSpore is imported only when a name that needs it is used.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "CNNCTC": "network",
    "load": "loader",
    "load_model": "loader",
    "create_network": "loader",
    "load_manifest": "registry",
    "Manifest": "manifest",
    "get_model": "registry",
    "list_models": "registry",
    "build_network": "registry",
    "fetch": "download",
    "verify_file": "download",
    "preprocess": "transforms",
    "Recognizer": "recognizer",
    "Prediction": "decoding",
    "ctc_greedy_decode": "decoding",
    "ctc_beam_decode": "decoding",
    "ctc_lexicon_decode": "decoding",
    "read_lexicon": "decoding",
    "make_decoder": "decoding",
    "Lexicon": "decoding",
    "ctc_log_probability": "decoding",
    "DecoderError": "decoding",
    "LexiconError": "decoding",
    "export_model": "export",
    "quantize_model": "quantize",
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

_NEEDS_MINDSPORE = {"network", "loader", "train", "export"}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnctc' has no attribute {name!r}")
    if module in _NEEDS_MINDSPORE:
        from ._mindspore import require_mindspore
        require_mindspore()  # a clear error, not MindSpore's own, when it cannot be imported here
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
