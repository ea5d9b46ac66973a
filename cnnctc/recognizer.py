"""Read words from images: preprocessing, a model runtime and CTC decoding, batched.

The runtime is MindSpore for checkpoints (``.ckpt``) and MindIR files, onnxruntime for ``.onnx``
files (MindSpore is then never imported). Every runtime maps a (B, 3, 32, 100) float32 batch to
(B, T, C) logits; preprocessing and decoding are the same for all of them.
"""

from pathlib import Path

import numpy as np

from .decoding import ctc_greedy_decode
from .errors import CnnctcError
from .registry import load_manifest
from .transforms import ImageError, find_images, load_image, preprocess_image  # noqa: F401 (find_images: API)

__all__ = ["Recognizer", "MindSporeRunner", "find_images", "padded_batch_size"]


def padded_batch_size(n, batch_size):
    """The batch shape ``n`` images run in: the full batch size, or for a short final batch the
    next power of two, so that graph mode compiles a handful of shapes at most."""
    size = 1
    while size < n:
        size *= 2
    return min(size, batch_size)


class MindSporeRunner:
    """Runs a MindSpore Cell on numpy batches, in padded batch shapes so graph mode compiles few."""

    def __init__(self, network, batch_size=32):
        self.network = network
        self.batch_size = batch_size

    def __call__(self, batch):
        from ._mindspore import mindspore as ms
        outputs = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            count = len(chunk)
            size = padded_batch_size(count, self.batch_size)
            if size > count:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - count, axis=0)])
            outputs.append(self.network(ms.Tensor(chunk)).asnumpy()[:count])
        return np.concatenate(outputs)


def _open_model(checkpoint, *, model, manifest, batch_size, device_target, network, network_kwargs):
    """(runner, manifest) for a checkpoint, an exported file, a given network or the registry's asset."""
    if network is not None:
        return MindSporeRunner(network, batch_size), load_manifest(manifest, model=model)
    suffix = Path(checkpoint).suffix.lower() if checkpoint is not None else ""
    if suffix == ".onnx":
        from .onnx_runtime import OnnxRunner
        runner = OnnxRunner(checkpoint)
        return runner, runner.manifest
    if suffix == ".mindir":
        from .export import MindIRRunner
        runner = MindIRRunner(checkpoint, device_target=device_target)
        return runner, runner.manifest
    from .loader import load_model
    loaded = load_model(checkpoint, model=model, manifest=manifest, device_target=device_target, **network_kwargs)
    return MindSporeRunner(loaded.network, batch_size), loaded.manifest


class Recognizer:
    """CNN-CTC with its preprocessing and decoding, on MindSpore or onnxruntime.

    >>> reader = Recognizer()                      # hub weights (downloaded and verified once)
    >>> reader.recognize(["word.png"])[0].text
    >>> Recognizer("model.onnx", decoder="beam", top_k=3)

    ``checkpoint``: a ``.ckpt`` (its alphabet and width come along), an exported ``.onnx`` or
    ``.mindir`` (alphabet and preprocessing read from the file), or None for the registry's
    asset of ``model`` (a hub uid). ``decoder``: "greedy" (default), "beam", or a callable
    ``(logits, alphabet, with_chars=False) -> [Prediction]``; ``decoder_options`` go to
    :func:`cnnctc.decoding.make_decoder` (``beam_width``, ``top_k``, ``lexicon``, ``max_distance``).
    """

    def __init__(self, checkpoint=None, *, model=None, manifest=None, batch_size=32, device_target=None,
                 decoder="greedy", decoder_options=None, network=None, **network_kwargs):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise CnnctcError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.runner, self.manifest = _open_model(checkpoint, model=model, manifest=manifest, batch_size=batch_size,
                                                 device_target=device_target, network=network,
                                                 network_kwargs=network_kwargs)
        self.decode = _make_decoder(decoder, decoder_options or {})
        if getattr(self.decode, "lexicon", None) is not None:  # refuse a lexicon with no readable word now
            self.decode.prepared_lexicon(self.alphabet)
        self._config = self.manifest.preprocess

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
        return self.runner(batch)

    def read_batch(self, batch, *, with_chars=False):
        """Preprocessed images -> one Prediction each, with this reader's decoder."""
        return self.decode(self.logits(batch), self.alphabet, with_chars=with_chars)

    def recognize(self, images, *, with_chars=False):
        """Images (PIL, paths, bytes or arrays) -> list of Prediction(text, confidence, chars).

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
        images = list(images)
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


def _make_decoder(decoder, options):
    if callable(decoder):
        return decoder
    if decoder in (None, "greedy") and options.get("lexicon") is None and options.get("top_k", 1) == 1:
        return ctc_greedy_decode
    from .decoding import make_decoder
    return make_decoder(decoder or "greedy", **options)
