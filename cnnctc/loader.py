"""Build a registered network and load published or user weights: ``cnnctc.load`` and the hub's entry."""
import contextlib
import dataclasses
import logging
from pathlib import Path

from ._checks import DEVICES, MAX_OUTPUT_CHANNEL, device_name
from ._mindspore import mindspore as ms
from .checkpoint import ALPHABET_KEY, load_weights, read_checkpoint
from .download import fetch
from .errors import CheckpointError, CnnctcError, shown
from .manifest import Manifest
from .registry import ARCHITECTURES, DEFAULT_MODEL, build_network, get_model

__all__ = ["load", "load_model", "LoadedModel", "create_network", "select_device", "configure_context",
           "check_network_options", "DEVICES"]

log = logging.getLogger(__name__)



@contextlib.contextmanager
def numpy_random_kept():
    """NumPy's global random state as it was, again after the block. MindSpore's weight initializers
    draw their seeds from it (``np.random.randint``), so building a network advanced the caller's
    random numbers; the draws still follow a seed the caller set (an untrained network stays
    reproducible), and the caller's next numbers are the ones they would have been."""
    import numpy as np
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


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
    """The device to run on: ``device_target`` if given; else the one this process already chose
    (``mindspore.set_device``, or a device other than CPU in MindSpore's context); else Ascend, else
    GPU, else CPU, whichever is available first."""
    if device_target is not None:
        return device_name(device_target)
    chosen = _chosen_device()
    if chosen:
        return chosen
    for candidate in ("Ascend", "GPU"):
        if _available(candidate):
            return candidate
    return "CPU"


def _chosen_device():
    """The device the process already runs on or asked for: ``mindspore.set_device`` was called, or
    MindSpore's context names a device other than CPU (``set_context(device_target=...)``, or the
    device of the MindSpore package); None when nothing was chosen."""
    try:
        from mindspore._c_expression import DeviceManagerConf
        conf = DeviceManagerConf.get_instance()
        if conf.is_device_enable():
            return conf.get_device_target()
    except (ImportError, AttributeError, RuntimeError):  # another MindSpore: only its context tells
        pass
    current = ms.get_context("device_target")
    return current if current in ("Ascend", "GPU") else None


def configure_context(device_target=None):
    """Put MindSpore in GRAPH_MODE on the device :func:`select_device` names; returns the device name.

    A device the process already chose (``mindspore.set_device``, or ``set_context(device_target=...)``
    for Ascend or GPU) is kept: asking for another one then is an error, never a silent switch. When
    nothing was chosen yet, the device is set with ``mindspore.set_device`` (device 0).
    """
    device = select_device(device_target)
    chosen = _chosen_device()
    if chosen and chosen != device:
        raise CnnctcError(f"MindSpore in this process already runs on {chosen} (mindspore.set_device or "
                          f"set_context); cnnctc does not switch it to {device}: leave device_target out, or "
                          "choose the device before loading")
    if device_target and device != "CPU" and not _available(device):
        raise CnnctcError(f"{device} is not available here (MindSpore finds no {device} device or plugin); "
                          "leave --device-target out to use the best available one")
    ms.set_context(mode=ms.GRAPH_MODE)
    if not chosen:
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


_NETWORK_OPTIONS = ("num_class", "hidden_size", "final_feature_width", "output_channel")
# One bound on the width for building, reading and training: twice the published 512 (_checks).
MAX_BUILD_OUTPUT_CHANNEL = MAX_OUTPUT_CHANNEL


def check_network_options(options, caller):
    """The network keyword arguments ``options`` as ints, or TypeError/ValueError naming the argument."""
    import numbers
    checked = {}
    for key, value in options.items():
        if key not in _NETWORK_OPTIONS:
            raise TypeError(f"{caller}() got an unexpected keyword argument {shown(key)} (network options: "
                            f"{', '.join(_NETWORK_OPTIONS)})")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{caller}(): {key} must be a whole number, got {type(value).__name__} {shown(value)}")
        value = int(value)
        widest = MAX_BUILD_OUTPUT_CHANNEL
        if key in ("output_channel", "hidden_size") and not (16 <= value <= widest and value % 16 == 0):
            raise ValueError(f"{caller}(): {key} must be a multiple of 16 from 16 to {widest} (512 is "
                             f"the published width), got {value}")
        if key == "num_class" and value < 2:
            raise ValueError(f"{caller}(): num_class must be at least 2 (one symbol and the blank), got {value}")
        if key == "final_feature_width" and value < 1:
            raise ValueError(f"{caller}(): final_feature_width must be positive, got {value}")
        checked[key] = value
    return checked


def create_network(name="cnnctc", *args, model=None, **kwargs):
    """The hub's entry point: an untrained network; with no arguments, the published configuration
    of ``model`` (a registered uid; default the default hub uid, whatever CNNCTC_MANIFEST says).

    Only the cell is built: MindSpore's mode and device stay as the caller set them (the hub card
    has the user call ``set_context``/``set_device`` first), and so does NumPy's global random
    state (the initial weights draw from it, and it is put back). ``device_target`` is accepted
    for compatibility and ignored.
    """
    if not isinstance(name, str) or name.lower() not in ARCHITECTURES:
        raise ValueError(f"unknown network {shown(name)}; known names: {', '.join(sorted(ARCHITECTURES))}")
    kwargs.pop("device_target", None)
    if args:  # the official positional form, CNNCTC_Model(num_class, hidden_size, final_feature_width)
        from .registry import _builder
        with numpy_random_kept():
            return _builder(name)(*args, **check_network_options(kwargs, "create_network"))
    manifest = get_model(model or DEFAULT_MODEL).manifest
    try:
        with numpy_random_kept():
            return build_network(manifest.replace(model_name=name.lower()),
                                 **check_network_options(kwargs, "create_network"))
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
                                  f"{shown(manifest.alphabet)} needs {manifest.num_class}; load it with the manifest "
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
    network_kwargs = check_network_options(network_kwargs, "load")
    entry = get_model(model, manifest=manifest)
    manifest = entry.manifest
    configure_context(device_target)
    state, path = None, None
    if pretrained:
        path = Path(checkpoint) if checkpoint is not None else fetch(manifest, cache_dir)
        state = read_checkpoint(path, weights_only=True)
        manifest = _fit_to_checkpoint(manifest, state, path)
    try:
        with numpy_random_kept():
            net = build_network(manifest, **network_kwargs)
    except (ValueError, TypeError) as exc:
        raise CnnctcError(f"cannot build the network: {exc}") from None
    if state is not None:
        load_weights(net, state, source=str(path))
    net.set_train(False)
    return LoadedModel(net, manifest, path)


def load(checkpoint=None, *, model=None, pretrained=True, device_target=None, manifest=None, cache_dir=None,
         **network_kwargs):
    """The network with weights, in eval mode.

    What it sets in MindSpore: ``set_context(mode=GRAPH_MODE)``, always (a :class:`~cnnctc.Recognizer`
    leaves the mode as it is and compiles its network with ``mindspore.jit`` instead); and, only
    when no device was chosen yet, ``set_device`` with ``device_target`` (else Ascend, else GPU,
    else CPU). A device you
    chose before (``mindspore.set_device``, or ``set_context(device_target="GPU")``) is kept; a
    ``device_target`` that differs from it is an error. To keep a CPU run on a GPU host, call
    ``mindspore.set_device("CPU")`` first or pass ``device_target="CPU"``. NumPy's global random
    state is left as it was.

    See :func:`load_model` for the arguments; ``pretrained=False`` returns fresh weights.
    The classes are the manifest's (or the checkpoint's saved) alphabet, the blank last.
    """
    return load_model(checkpoint, model=model, manifest=manifest, pretrained=pretrained,
                      device_target=device_target, cache_dir=cache_dir, **network_kwargs).network
