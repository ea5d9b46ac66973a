"""Read words from images: preprocessing, a model runtime and CTC decoding, batched.

``.onnx`` files run on onnxruntime (MindSpore is then never imported), MindIR files on MindSpore.
A checkpoint (``.ckpt``) or a hub uid runs on the ``runtime`` asked for; ``auto`` (the default)
takes onnxruntime on a CPU-only machine with the ``onnx`` extra, through an export kept in the
cache (see :mod:`cnnctc.runtime`), and MindSpore otherwise. Every runtime maps a
(B, 3, 32, 100) float32 batch to (B, T, C) logits; preprocessing and decoding are the same for
all of them.
"""
import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from ._checks import device_name, positive_int
from ._signals import graph_call
from .decoding import decoder_for
from .errors import CnnctcError, DownloadError, IntegrityError
from .manifest import _NETWORK_KEYS
from .registry import load_manifest
from .runtime import check_runtime
from .transforms import ImageError, find_images, load_image, preprocess_image  # noqa: F401 (find_images: API)

__all__ = ["Recognizer", "MindSporeRunner", "find_images", "padded_batch_size", "reader_identity"]

log = logging.getLogger(__name__)


def padded_batch_size(n, batch_size):
    """The batch shape ``n`` images run in: the full batch size, or for a short final batch the
    next power of two, so that graph mode compiles a handful of shapes at most."""
    size = 1
    while size < n:
        size *= 2
    return min(size, batch_size)


def _compiled_call(network):
    """``network`` as a function MindSpore compiles to a graph (``mindspore.jit``), whatever the
    process's mode: a PYNATIVE_MODE process gets graph-mode runs without its mode being changed."""
    from ._mindspore import mindspore as ms

    def run(images):
        return network(images)
    return ms.jit(run)


class MindSporeRunner:
    """Runs a MindSpore Cell on numpy batches, in padded batch shapes so graph mode compiles few.

    Safe to call from several threads: the MindSpore runs take turns (:func:`cnnctc._mindspore.network_run`).
    ``owned``: the network is cnnctc's own (a Recognizer loaded it): in a PYNATIVE_MODE process it
    runs as a compiled graph through ``mindspore.jit`` (the process's mode is left as it is), and it
    is released when the interpreter exits (:func:`cnnctc._mindspore.release_at_exit`), before
    MindSpore's modules are torn down. A network the caller gave runs in the caller's mode and is
    the caller's to keep.
    """

    def __init__(self, network, batch_size=32, *, owned=False):
        self.network = network
        self.batch_size = batch_size
        self.owned = owned
        self._compiled = set()   # (mode, batch shape) pairs MindSpore has compiled
        self._jitted = None      # the owned network compiled with mindspore.jit, for PYNATIVE_MODE
        if owned:
            from ._mindspore import release_at_exit
            release_at_exit(self)

    def release(self):
        """Drop the network (at interpreter exit): its Cells are freed while Python can still free them."""
        self.network = self._jitted = None

    def _run(self, network, tensor):
        from ._mindspore import mindspore as ms
        if self.owned and ms.get_context("mode") == ms.PYNATIVE_MODE:
            if self._jitted is None:
                self._jitted = _compiled_call(network)
            return self._jitted(tensor)
        return network(tensor)

    def __call__(self, batch):
        from ._mindspore import mindspore as ms, network_run
        outputs = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            count = len(chunk)
            size = padded_batch_size(count, self.batch_size)
            if size > count:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - count, axis=0)])
            # One MindSpore run at a time (threads sharing a reader), refused in a forked child.
            with network_run():
                network = self.network
                if network is None:
                    raise CnnctcError("this reader's MindSpore network was released as the interpreter exits; "
                                      "read before exit, or create a new Recognizer")
                # A new batch shape compiles: only then are a Ctrl-C and MindSpore's lines handled for it.
                key = (ms.get_context("mode"), chunk.shape)
                with contextlib.nullcontext() if key in self._compiled else graph_call():
                    outputs.append(self._run(network, ms.Tensor(chunk)).asnumpy()[:count])
                self._compiled.add(key)
        return np.concatenate(outputs)


def _refuse(runtime, wanted, what):
    if runtime not in ("auto", wanted):
        raise CnnctcError(f"{what} runs on {wanted}, not {runtime}; leave runtime out (or use auto or {wanted})")


def _open_model(checkpoint, *, model, manifest, batch_size, device_target, network, network_kwargs, runtime):
    """(runner, manifest) for a checkpoint, an exported file, a given network or the registry's asset."""
    if network is not None:
        _refuse(runtime, "mindspore", "a given network")
        return MindSporeRunner(network, batch_size), load_manifest(manifest, model=model)
    suffix = Path(checkpoint).suffix.lower() if checkpoint is not None else ""
    if suffix in (".onnx", ".mindir"):
        if network_kwargs:
            raise TypeError(f"Recognizer() got network options {', '.join(sorted(network_kwargs))}, but an exported "
                            f"{suffix} file has its network built in")
        if model is not None or manifest is not None:
            raise CnnctcError(f"{checkpoint}: an exported file carries its own description (alphabet, "
                              "preprocessing); leave out --model and --manifest")
    if suffix == ".onnx":
        _refuse(runtime, "onnxruntime", "an .onnx file")
        if device_target is not None and device_name(device_target) != "CPU":
            raise CnnctcError(f"{checkpoint}: an .onnx file runs on onnxruntime's CPU provider, not on "
                              f"{device_name(device_target)}; leave --device-target out (or read the .ckpt on "
                              f"{device_name(device_target)} with MindSpore)")
        from .onnx_runtime import OnnxRunner
        runner = OnnxRunner(checkpoint)
        return runner, runner.manifest
    if suffix == ".mindir":
        _refuse(runtime, "mindspore", "a .mindir file")
        from .export import MindIRRunner
        runner = MindIRRunner(checkpoint, device_target=device_target)
        return runner, runner.manifest
    from .runtime import cached_onnx, prefers_onnxruntime
    why_not_onnx = None
    if runtime == "onnxruntime" or (runtime == "auto" and prefers_onnxruntime(device_target)):
        try:
            runner = cached_onnx(checkpoint, model=model, manifest=manifest, device_target=device_target,
                                 network_kwargs=network_kwargs)
            return runner, runner.manifest
        except (DownloadError, IntegrityError):
            raise   # the checkpoint itself cannot be had: MindSpore would only try the download again
        except CnnctcError as exc:
            if runtime == "onnxruntime":
                raise
            why_not_onnx = exc   # auto: MindSpore reads it (and says what is wrong with it, if anything)
    from ._mindspore import mode_kept
    from .loader import load_model
    with mode_kept():   # the caller's mode stays: the runner compiles the network itself in PYNATIVE_MODE
        loaded = load_model(checkpoint, model=model, manifest=manifest, device_target=device_target,
                            **network_kwargs)
    if why_not_onnx is not None:
        log.info("running on MindSpore: no ONNX export (%s)", why_not_onnx)
    return MindSporeRunner(loaded.network, batch_size, owned=True), loaded.manifest


def _one_or_many(images):
    """A single image (path, bytes, PIL image, one array) as a list of one; anything else as a list."""
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if hasattr(images, "getpixel") and hasattr(images, "mode"):   # a PIL image, without importing PIL here
        return [images]
    try:
        return list(images)
    except TypeError:
        raise TypeError(f"images must be an image (path, bytes, PIL image or array) or a list of them, "
                        f"got {type(images).__name__}") from None


class Recognizer:
    """CNN-CTC with its preprocessing and decoding, on MindSpore or onnxruntime.

    >>> reader = Recognizer()                      # hub weights (downloaded and verified once)
    >>> reader.recognize("word.png")[0].text       # one image or a list of them
    >>> Recognizer("model.onnx", decoder="beam", decoder_options={"top_k": 3})

    ``checkpoint``: a ``.ckpt`` (its alphabet and width come along), an exported ``.onnx`` or
    ``.mindir`` (alphabet and preprocessing read from the file), or None for the registry's
    asset of ``model`` (a hub uid). ``runtime`` for a checkpoint: "auto" (default: onnxruntime on
    a CPU-only machine with the onnx extra, through an ONNX export kept in the cache; MindSpore
    otherwise), "mindspore" or "onnxruntime". ``decoder``: "greedy" (default), "beam", or a
    callable ``(logits, alphabet, with_chars=False) -> [Prediction]``; ``decoder_options`` (a
    dict) go to :func:`cnnctc.decoding.make_decoder` (``beam_width``, ``top_k``, ``lexicon``,
    ``max_distance``). Further keywords are network options of a checkpoint (``output_channel``,
    ``hidden_size``, ...); any other keyword is a TypeError.

    A Recognizer may be shared between threads on every runtime, and each call returns the
    readings of its own images: onnxruntime runs them concurrently; on MindSpore, whose graph runs
    are not thread-safe, the network calls take turns (preprocessing and decoding stay parallel).
    onnxruntime also works in a child forked with :mod:`multiprocessing` (``fork``). MindSpore does
    not survive a fork: in a child forked after MindSpore ran in its parent, a MindSpore reader
    raises :class:`CnnctcError` at once; start such workers with
    ``multiprocessing.get_context("spawn")`` and create the Recognizer in each.

    MindSpore's mode is left as the process set it (unlike :func:`cnnctc.load`, which sets
    GRAPH_MODE): in PYNATIVE_MODE, MindSpore's default, a network the Recognizer loads runs as a
    graph compiled with ``mindspore.jit``; in GRAPH_MODE as a Cell; a ``network`` you give runs in
    your mode. The device is chosen as :func:`cnnctc.load` chooses it. The MindSpore networks a
    Recognizer loads are released when the interpreter exits (an ``atexit`` hook; a reader used
    after it raises :class:`CnnctcError`), so that a script's exit prints none of MindSpore's
    ``Cell.__del__`` errors for them.
    """

    def __init__(self, checkpoint=None, *, model=None, manifest=None, batch_size=32, device_target=None,
                 decoder="greedy", decoder_options=None, network=None, runtime="auto", **network_kwargs):
        self.batch_size = positive_int(batch_size, "batch_size")
        runtime = check_runtime(runtime)
        unknown = sorted(set(network_kwargs) - set(_NETWORK_KEYS))
        if unknown:
            hint = " (decoder options go in decoder_options={...})" if set(unknown) & _DECODER_KEYS else ""
            raise TypeError(f"Recognizer() got unexpected keyword argument(s) {', '.join(unknown)}{hint}")
        if decoder_options is not None and not isinstance(decoder_options, dict):
            raise TypeError(f"decoder_options must be a dict, got {type(decoder_options).__name__}")
        self.decode = decoder_for(decoder, decoder_options)   # a wrong option fails before a model loads
        self.runner, self.manifest = _open_model(checkpoint, model=model, manifest=manifest,
                                                 batch_size=self.batch_size, device_target=device_target,
                                                 network=network, network_kwargs=network_kwargs, runtime=runtime)
        if getattr(self.decode, "lexicon", None) is not None:  # refuse a lexicon with no readable word now
            self.decode.prepared_lexicon(self.alphabet)
        self._config = self.manifest.preprocess
        self._source = (str(checkpoint) if checkpoint is not None else "the given network" if network is not None
                        else self.manifest.uid)

    @property
    def alphabet(self):
        """The symbols of classes 0..C-2; the blank is the last class."""
        return self.manifest.alphabet

    @property
    def network(self):
        """The MindSpore Cell, for MindSpore runtimes."""
        return getattr(self.runner, "network", None)

    def logits(self, batch):
        """Network output (B, T, C) for preprocessed (B, 3, 32, 100) float32 images."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not len(batch):
            return np.zeros((0, 26, len(self.alphabet) + 1), np.float32)
        logits = self.runner(batch)
        if not np.isfinite(logits).all():
            raise CnnctcError(f"{self._source}: the network's outputs hold NaN or infinity: its weights overflow "
                              "(a broken or diverged model); retrain or export it again")
        return logits

    def read_batch(self, batch, *, with_chars=False):
        """Preprocessed images -> one Prediction each, with this reader's decoder."""
        return self.decode(self.logits(batch), self.alphabet, with_chars=with_chars)

    def recognize(self, images, *, with_chars=False):
        """An image or a list of images (PIL, paths, bytes or arrays) -> list of Prediction(text,
        confidence, chars), one per image.

        Raises :class:`ImageError` naming the first input that is not a readable image.
        """
        predictions = []
        for _, result in self.recognize_each(images, with_chars=with_chars):
            if isinstance(result, ImageError):
                raise result
            predictions.append(result)
        return predictions

    def recognize_each(self, images, *, with_chars=False):
        """Yield (input, Prediction or ImageError) in order; an unreadable input does not stop the rest."""
        images = _one_or_many(images)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            arrays, results = [], {}
            for i, image in enumerate(chunk):
                try:
                    arrays.append((i, preprocess_image(load_image(image), self._config)))
                except ImageError as exc:
                    results[i] = exc
            if arrays:
                decoded = self.read_batch(np.stack([a for _, a in arrays]), with_chars=with_chars)
                results.update({i: prediction for (i, _), prediction in zip(arrays, decoded)})
            for i, image in enumerate(chunk):
                yield image, results[i]


_DECODER_KEYS = {"beam_width", "top_k", "lexicon", "max_distance", "decoder"}


def reader_identity(reader):
    """What decides a Recognizer's readings, as plain data: the model (its file's SHA-256, or the
    registry's), alphabet, preprocessing, batch size and decoder with its lexicon's words. msrun's
    ranks compare it, so that a rank whose files differ at the same path is refused."""
    import hashlib
    import json
    from .download import sha256_file
    source = reader._source
    digest = None
    if os.path.isfile(source):
        digest = sha256_file(source)
    elif source == reader.manifest.uid:
        digest = reader.manifest.sha256
    decode = reader.decode
    lexicon = getattr(decode, "lexicon", None)
    if lexicon is not None:
        words = getattr(lexicon, "words", lexicon)
        lexicon = hashlib.sha256(json.dumps(list(words), default=str).encode()).hexdigest()
    return {"model": source, "sha256": digest, "alphabet": reader.alphabet, "batch_size": reader.batch_size,
            "preprocess": repr(reader.manifest.preprocess), "lexicon": lexicon,
            # a function by its name (its repr holds an address, another in every process)
            "decoder": f"{decode.__module__}.{decode.__qualname__}" if hasattr(decode, "__qualname__") else repr(decode)}
