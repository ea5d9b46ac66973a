"""Image preprocessing exactly as the published accuracy was measured (model zoo r1.3).

RGB; aspect-kept bicubic resize to height 32, width ceil(32 * w / h) capped at 100; per-channel
(x - mean) / std on the 0-255 values in float64, stored as float32; CHW; right padding to width
100 by repeating the last column. The constants come from the manifest. Used by prediction,
evaluation and training alike.
"""
import io
import math
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CnnctcError
from .manifest import load_manifest

__all__ = ["preprocess", "preprocess_image", "load_image", "ImageError"]

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageError(CnnctcError):
    """An input is not a readable image."""


def _from_array(array):
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint16 and array.ndim == 2:
        return Image.fromarray(array)  # mode I;16
    if array.dtype != np.uint8:
        raise ImageError(f"arrays must be uint8 (or uint16 grey), got {array.dtype}")
    if array.ndim == 2:
        return Image.fromarray(array, "L")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(array, "RGB" if array.shape[2] == 3 else "RGBA")
    raise ImageError(f"arrays must be HxW or HxWxC with C in 1, 3, 4; got shape {array.shape}")


def load_image(source):
    """A PIL image in RGB from a PIL image, a path, encoded bytes or a uint8/uint16 array."""
    name = None
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (str, os.PathLike)):
            name = os.fspath(source)
            with Image.open(name) as opened:
                opened.load()
                image = opened.copy()
        elif isinstance(source, (bytes, bytearray, memoryview)):
            name = "image bytes"
            image = Image.open(io.BytesIO(bytes(source)))
            image.load()
        elif isinstance(source, np.ndarray):
            image = _from_array(source)
        else:
            raise ImageError(f"cannot read an image from {type(source).__name__}")
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name or 'image'}: not a readable image ({exc})") from None
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{name or 'image'}: empty image ({image.width}x{image.height})")
    if image.mode in _SIXTEEN_BIT:
        # Pillow clips 16-bit values to 255 when converting; scale the range instead.
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def preprocess_image(image, config):
    """One RGB PIL image -> (3, height, max_width) float32, with ``config`` a manifest's Preprocess."""
    height, max_width = config.height, config.max_width
    width = min(math.ceil(height * (image.width / float(image.height))), max_width)
    resized = image.resize((width, height), _RESAMPLE[config.resample])
    values = np.asarray(resized, dtype=np.float64)
    values = (values - np.asarray(config.mean, np.float64)) / np.asarray(config.std, np.float64)
    out = np.empty((3, height, max_width), np.float32)
    out[:, :, :width] = values.transpose(2, 0, 1)
    out[:, :, width:] = out[:, :, width - 1:width]
    return out


def preprocess(images, manifest=None):
    """Images (PIL, paths, bytes or arrays; one or a list) -> (B, 3, 32, 100) float32."""
    config = load_manifest(manifest).preprocess
    if isinstance(images, (str, os.PathLike, bytes, Image.Image)) or (
            isinstance(images, np.ndarray) and images.dtype in (np.uint8, np.uint16) and images.ndim in (2, 3)):
        images = [images]
    batch = [preprocess_image(load_image(image), config) for image in images]
    if not batch:
        return np.zeros((0, 3, config.height, config.max_width), np.float32)
    return np.stack(batch)
