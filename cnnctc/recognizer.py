"""Read words from images: preprocessing, the network and CTC decoding, batched."""
import glob
import os

import numpy as np
import mindspore as ms

from .decoding import ctc_greedy_decode
from .loader import load
from .manifest import load_manifest
from .transforms import ImageError, load_image, preprocess_image

__all__ = ["Recognizer", "find_images"]


def find_images(paths, *, recursive=False):
    """Expand files, folders (their files, sorted; subfolders with ``recursive``) and globs.

    Names that match nothing are kept, so that reading them reports the missing file.
    """
    found = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            if recursive:
                for root, dirs, files in os.walk(path):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
            else:
                found += [os.path.join(path, f) for f in sorted(os.listdir(path))
                          if not f.startswith(".") and os.path.isfile(os.path.join(path, f))]
        elif not os.path.exists(path) and glob.has_magic(path):
            found += sorted(p for p in glob.glob(path, recursive=recursive) if os.path.isfile(p)) or [path]
        else:
            found.append(path)
    return found


def padded_batch_size(n, batch_size):
    """The batch shape ``n`` images run in: the full batch size, or for a short final batch the
    next power of two, so that graph mode compiles a handful of shapes at most."""
    size = 1
    while size < n:
        size *= 2
    return min(size, batch_size)


class Recognizer:
    """CNN-CTC with its preprocessing and decoding.

    >>> reader = Recognizer()                      # hub weights (downloaded and verified once)
    >>> reader.recognize(["word.png"])[0].text
    """

    def __init__(self, checkpoint=None, *, batch_size=32, device_target=None, manifest=None, network=None,
                 **network_kwargs):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.manifest = load_manifest(manifest)
        self.batch_size = batch_size
        self.network = network if network is not None else load(
            checkpoint, device_target=device_target, manifest=self.manifest, **network_kwargs)
        self.alphabet = getattr(self.network, "alphabet", self.manifest.alphabet)
        self._config = self.manifest.preprocess

    def logits(self, batch):
        """Network output (B, T, C) for preprocessed (B, 3, 32, 100) images, run in padded batches."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            count = len(chunk)
            size = padded_batch_size(count, self.batch_size)
            if size > count:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - count, axis=0)])
            outputs.append(self.network(ms.Tensor(chunk)).asnumpy()[:count])
        return np.concatenate(outputs) if outputs else np.zeros((0, 26, len(self.alphabet) + 1), np.float32)

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
                decoded = ctc_greedy_decode(self.logits(np.stack([a for _, a in arrays])), self.alphabet,
                                            with_chars=with_chars)
                results.update({i: prediction for (i, _), prediction in zip(arrays, decoded)})
            for i, image in enumerate(chunk):
                yield image, results[i]
