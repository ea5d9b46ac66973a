"""Build the network and load published or user weights: ``cnnctc.load`` and the hub's entry."""
import logging

import mindspore as ms

from .checkpoint import ALPHABET_KEY, load_weights, read_checkpoint
from .download import fetch
from .errors import CheckpointError, CnnctcError
from .manifest import load_manifest
from .network import CNNCTC

__all__ = ["load", "create_network", "select_device", "configure_context", "NETWORKS"]

log = logging.getLogger(__name__)

# Names the hub (and users) can ask create_network for.
NETWORKS = {"cnnctc": CNNCTC}


def select_device(device_target=None):
    """The device to run on: ``device_target`` if given, else Ascend, else GPU, else CPU."""
    if device_target:
        return device_target
    from mindspore import hal
    for candidate in ("Ascend", "GPU"):
        try:
            if hal.is_available(candidate):
                return candidate
        except (RuntimeError, ValueError):
            pass
    return "CPU"


def configure_context(device_target=None):
    """Put MindSpore in GRAPH_MODE on the selected device; returns the device name."""
    device = select_device(device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.set_device(device)
    except RuntimeError:
        # The runtime already started (an earlier network, or a joined cluster): it keeps its device.
        current = ms.get_context("device_target")
        if current != device:
            raise CnnctcError(f"MindSpore already runs on {current} in this process; "
                              f"cannot switch to {device}") from None
    log.info("MindSpore %s in GRAPH_MODE on %s", ms.__version__, device)
    return device


def create_network(name="cnnctc", *args, **kwargs):
    """The hub's entry point: an untrained network; with no arguments, the published configuration."""
    try:
        cls = NETWORKS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; known names: {', '.join(sorted(NETWORKS))}") from None
    if not args:
        defaults = load_manifest().network_kwargs()
        kwargs = {**defaults, **kwargs}
    configure_context(kwargs.pop("device_target", None))
    return cls(*args, **kwargs)


def load(checkpoint=None, *, pretrained=True, device_target=None, manifest=None, cache_dir=None,
         **network_kwargs):
    """The CNN-CTC network with weights, in eval mode, MindSpore in GRAPH_MODE on ``device_target``.

    Without ``checkpoint`` the manifest's asset is taken from the shared cache (downloaded and
    verified if needed). The network's width and class count follow the checkpoint's head
    (``network_kwargs`` override them); a fine-tuned checkpoint brings its alphabet along.
    ``net.alphabet`` tells which symbols the classes stand for. ``pretrained=False`` returns
    freshly initialised weights.
    """
    manifest = load_manifest(manifest)
    configure_context(device_target)
    kwargs = manifest.network_kwargs()
    alphabet = manifest.alphabet
    state = None
    if pretrained:
        path = checkpoint if checkpoint is not None else fetch(manifest, cache_dir)
        state = read_checkpoint(path, weights_only=True)
        if isinstance(state.get(ALPHABET_KEY), str):
            alphabet = state[ALPHABET_KEY]
        head = state.get("Prediction.weight")
        if head is not None and len(head.shape) == 2:
            # The head tells the class count and the width of the variant that was saved.
            kwargs["num_class"], kwargs["output_channel"] = (int(n) for n in head.shape)
            if kwargs["num_class"] != len(alphabet) + 1:
                raise CheckpointError(f"{path}: its head has {kwargs['num_class']} classes but the alphabet "
                                      f"{alphabet!r} needs {len(alphabet) + 1}; load it with the manifest that "
                                      "names its alphabet")
    kwargs.update(network_kwargs)
    net = CNNCTC(**kwargs)
    if state is not None:
        load_weights(net, state, source=str(path))
    net.set_train(False)
    net.alphabet = alphabet  # what the classes mean; the blank is the last class
    return net

