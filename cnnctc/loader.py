"""Build a registered network and load published or user weights: ``cnnctc.load`` and the hub's entry."""
import contextlib
import dataclasses
import logging
from pathlib import Path

from ._mindspore import mindspore as ms
from .checkpoint import ALPHABET_KEY, load_weights, read_checkpoint
from .download import fetch
from .errors import CheckpointError, CnnctcError
from .manifest import Manifest
from .registry import ARCHITECTURES, build_network, get_model

__all__ = ["load", "load_model", "LoadedModel", "create_network", "select_device", "configure_context",
           "DEVICES"]

log = logging.getLogger(__name__)

DEVICES = ("Ascend", "GPU", "CPU")


@contextlib.contextmanager
def _quiet_mindspore_logger():
    # hal.is_available logs a block per missing plugin; silence MindSpore's Python logger just for the probe.
    from mindspore import log as ms_log
    logger = ms_log._get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _available(device):
    from mindspore import hal
    with _quiet_mindspore_logger():
        try:
            return hal.is_available(device)
        except (RuntimeError, ValueError):
            return False


def select_device(device_target=None):
    """The device to run on: ``device_target`` if given, else Ascend, else GPU, else CPU."""
    if device_target:
        for name in DEVICES:
            if str(device_target).lower() == name.lower():
                return name
        raise CnnctcError(f"unknown device target {device_target!r}; use one of {', '.join(DEVICES)}")
    for candidate in ("Ascend", "GPU"):
        if _available(candidate):
            return candidate
    return "CPU"


def configure_context(device_target=None):
    """Put MindSpore in GRAPH_MODE on the selected device; returns the device name."""
    device = select_device(device_target)
    if device_target and device != "CPU" and not _available(device):
        raise CnnctcError(f"{device} is not available here (MindSpore finds no {device} device or plugin); "
                          "leave --device-target out to use the best available one")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.set_device(device)
    except RuntimeError:
        # The runtime already started (an earlier network, or a joined cluster): it keeps its device.
        current = ms.get_context("device_target")
        if current != device:
            raise CnnctcError(f"MindSpore already runs on {current} in this process; "
                              f"cannot switch to {device}") from None
    except ValueError as exc:
        raise CnnctcError(f"MindSpore cannot use {device} here ({str(exc).splitlines()[0]})") from None
    log.info("MindSpore %s in GRAPH_MODE on %s", ms.__version__, device)
    return device


def create_network(name="cnnctc", *args, **kwargs):
    """The hub's entry point: an untrained network; with no arguments, the published configuration."""
    if not isinstance(name, str) or name.lower() not in ARCHITECTURES:
        raise ValueError(f"unknown network {name!r}; known names: {', '.join(sorted(ARCHITECTURES))}")
    configure_context(kwargs.pop("device_target", None))
    manifest = get_model().manifest
    if args:  # the official positional form, CNNCTC_Model(num_class, hidden_size, final_feature_width)
        from .registry import _builder
        return _builder(name)(*args, **kwargs)
    try:
        return build_network(manifest.replace(model_name=name.lower()), **kwargs)
    except (ValueError, TypeError) as exc:
        raise CnnctcError(f"cannot build {name}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A network in eval mode with the manifest that reads it (alphabet and shape as loaded)."""
    network: object
    manifest: Manifest
    checkpoint: Path = None


def _fit_to_checkpoint(manifest, state, path):
    """The manifest adjusted to what the checkpoint holds: its saved alphabet and its head's shape."""
    alphabet = state.get(ALPHABET_KEY)
    if isinstance(alphabet, str):
        manifest = manifest.replace(alphabet=alphabet)
    head = state.get("Prediction.weight")
    if head is not None and len(head.shape) == 2:
        num_class, width = (int(n) for n in head.shape)
        if num_class != manifest.num_class:
            raise CheckpointError(f"{path}: its head has {num_class} classes but the alphabet "
                                  f"{manifest.alphabet!r} needs {manifest.num_class}; load it with the manifest "
                                  "that names its alphabet")
        manifest = manifest.replace(network={**manifest.network, "output_channel": width})
    return manifest


def load_model(checkpoint=None, *, model=None, manifest=None, pretrained=True, device_target=None, cache_dir=None,
               **network_kwargs):
    """A :class:`LoadedModel`: the network with weights, and the manifest that reads its outputs.

    ``model`` is a registered uid (default: ``CNNCTC_MANIFEST`` if set, else
    ``mindspore/1.3/cnnctc_mjstiiit``); ``manifest`` a user's manifest instead. Without
    ``checkpoint`` the entry's asset is taken from the shared cache (downloaded and verified if
    needed). The width and class count follow the checkpoint's head, and a fine-tuned
    checkpoint brings its alphabet along; ``network_kwargs`` override them.
    """
    entry = get_model(model, manifest=manifest)
    manifest = entry.manifest
    configure_context(device_target)
    state, path = None, None
    if pretrained:
        path = Path(checkpoint) if checkpoint is not None else fetch(manifest, cache_dir)
        state = read_checkpoint(path, weights_only=True)
        manifest = _fit_to_checkpoint(manifest, state, path)
    try:
        net = build_network(manifest, **network_kwargs)
    except (ValueError, TypeError) as exc:
        raise CnnctcError(f"cannot build the network: {exc}") from None
    if state is not None:
        load_weights(net, state, source=str(path))
    net.set_train(False)
    return LoadedModel(net, manifest, path)


def load(checkpoint=None, *, model=None, pretrained=True, device_target=None, manifest=None, cache_dir=None,
         **network_kwargs):
    """The network with weights, in eval mode, MindSpore in GRAPH_MODE on ``device_target``.

    See :func:`load_model` for the arguments; ``pretrained=False`` returns fresh weights.
    The classes are the manifest's (or the checkpoint's saved) alphabet, the blank last.
    """
    return load_model(checkpoint, model=model, manifest=manifest, pretrained=pretrained,
                      device_target=device_target, cache_dir=cache_dir, **network_kwargs).network
