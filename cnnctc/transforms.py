"""Image preprocessing exactly as the published accuracy was measured (model zoo r1.3).

RGB; aspect-kept bicubic resize to height 32, width ceil(32 * w / h) capped at 100; per-channel
(x - mean) / std on the 0-255 values in float64, stored as float32; CHW; right padding to width
100 by repeating the last column. The constants come from the manifest. Used by prediction,
evaluation and training alike.

Before that transform an image is made upright (EXIF orientation) and any transparency is
composited onto white; plain RGB inputs reach the transform untouched. Only regular files are
read, and images larger than Pillow's decompression-bomb limit are refused.
"""
import fnmatch
import glob
import io
import math
import os
import re
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps

from ._files import NotRegularFile, open_regular
from .errors import CnnctcError
from .registry import load_manifest

__all__ = ["preprocess", "preprocess_image", "load_image", "read_image_file", "find_images", "ImageError",
           "MAX_IMAGE_BYTES"]

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
# Modes whose values are not 8-bit: 16-bit and 32-bit integers, 32-bit floats (_to_eight_bits).
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_ORIENTATION = 0x0112  # EXIF tag
# A file larger than this is not read: an image at Pillow's pixel limit (89.5 million pixels) takes
# 716 MB uncompressed even in 16-bit RGBA, so no image cnnctc can decode is larger.
MAX_IMAGE_BYTES = 1 << 30


class ImageError(CnnctcError):
    """An input is not a readable image."""


class ImageTypeError(ImageError, TypeError):
    """An input of a type that cannot hold an image (also a TypeError, as wrong argument types are)."""


def _shown(name):
    """A path as one printable line (control characters escaped)."""
    name = os.fsdecode(name)
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return name.encode("unicode_escape", "backslashreplace").decode("ascii")
    return name


def _one_line(text):
    return " ".join(str(text).split())


def _file_kind(mode):
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def _os_error(name, exc):
    shown = _shown(name)
    if isinstance(exc, FileNotFoundError):
        return ImageError(f"{shown}: no such file")
    if isinstance(exc, PermissionError):
        return ImageError(f"{shown}: permission denied (cannot read it)")
    if isinstance(exc, MemoryError):
        return ImageError(f"{shown}: not enough memory to read it")
    return ImageError(f"{shown}: cannot read it ({_one_line(exc.strerror or exc)})")


def _not_regular(name, mode):
    shown = _shown(name)
    if stat.S_ISDIR(mode):
        if not os.access(name, os.R_OK | os.X_OK):
            return ImageError(f"{shown}: a folder that cannot be read (permission denied)")
        return ImageError(f"{shown}: a folder, not an image file")
    return ImageError(f"{shown}: not a regular file ({_file_kind(mode)}); only regular files are read")


def _too_large(name, size):
    return ImageError(f"{_shown(name)}: {size / 2**30:,.1f} GiB, larger than any image cnnctc reads "
                      f"({MAX_IMAGE_BYTES / 2**30:.0f} GiB at most); not read")


def _identify(handle, name):
    """Let Pillow read the header of an open file (the rest stays on disk); refuse non-images and bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.open(handle)  # not closed: Image.close would close the caller's file too
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(name, exc) from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (unknown or damaged image format)") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to read its header") from None
    except Exception as exc:  # Pillow's plugins raise many types on hostile headers
        raise ImageError(f"{name}: not a readable image ({_one_line(exc) or type(exc).__name__})") from None


def read_image_file(path):
    """The bytes of a regular file that holds an image; anything else is refused before it is read.

    FIFOs, devices and folders are refused without blocking; a file larger than
    ``MAX_IMAGE_BYTES`` is refused by its size and one whose header no image format recognises
    by its header, so a huge or hostile file costs neither time nor memory. Raises
    :class:`ImageError` with a one-line reason for anything that cannot be read.
    """
    name = os.fspath(path)
    shown = _shown(name)
    try:
        with open_regular(name) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_IMAGE_BYTES:
                raise _too_large(name, size)
            _identify(f, shown)
            f.seek(0)
            return f.read(MAX_IMAGE_BYTES + 1)
    except NotRegularFile as exc:
        raise _not_regular(name, exc.mode) from None
    except (OSError, MemoryError) as exc:
        raise _os_error(name, exc) from None
    except ValueError:  # e.g. an embedded NUL
        raise ImageError(f"{shown}: not a valid file name") from None


def _bomb_error(name, exc):
    limit = Image.MAX_IMAGE_PIXELS
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return ImageError(f"{name}: image has {size}, more than the {limit:,} Pillow allows for "
                      "decompression-bomb safety; not read")


def _decode(data, name):
    """Decode encoded bytes fully; every failure becomes an ImageError."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; refuse there too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
        return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(name, exc) from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (unknown or damaged image format)") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # Pillow's plugins raise many types on hostile input
        reason = _one_line(exc) or type(exc).__name__
        raise ImageError(f"{name}: not a readable image ({reason})") from None


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


def _upright(image):
    """Apply the EXIF orientation, if any (a camera's rotated JPEG reads upright)."""
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(image)
    except Exception:  # damaged metadata: read the pixels as stored
        pass
    return image


def _on_white(image):
    """Composite an image with transparency onto white, in RGB; others are returned as they are."""
    if image.mode not in _ALPHA_MODES and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def _to_eight_bits(image, name):
    """A grey image of 16-bit, 32-bit integer or float values as 8-bit grey, by the range its values use.

    Pillow's own conversion clips to 255 (a 16-bit image turns white) or, for mode "I", a caller
    dividing by 257 turns 8-bit data black; so the values decide: all within 0..255 are 8-bit data
    (floats within 0..1 are fractions of white), within 0..65535 16-bit data, and any other range
    is stretched from its minimum to its maximum. A constant image keeps its value (clipped to
    0..255). NaN or infinite values are refused: there is no picture to read in them.
    """
    values = np.asarray(image, dtype=np.float64)
    if values.size and not np.isfinite(values).all():
        raise ImageError(f"{name}: not a readable image (its {image.mode} pixel values hold NaN or infinity)")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F" and low >= 0 and high <= 1 and high > 0:
        values = values * 255.0
    elif low >= 0 and high <= 255:
        pass
    elif low >= 0 and high <= 65535:
        values = values / 257.0
    elif high > low:
        values = (values - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def load_image(source):
    """A PIL image in RGB from a PIL image, a path, encoded bytes or a uint8/uint16 array.

    EXIF orientation is applied and transparency composited onto white. Raises
    :class:`ImageError` (one line, naming the input) for anything that is not a readable image.
    """
    if isinstance(source, Image.Image):
        name, image = "image", source
    elif isinstance(source, (str, os.PathLike)):
        name = _shown(os.fspath(source))
        image = _decode(read_image_file(source), name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = "image bytes"
        image = _decode(bytes(source), name)
    elif isinstance(source, np.ndarray):
        name, image = "image array", _from_array(source)
    else:
        raise ImageTypeError(f"an image must be a path, encoded bytes, a PIL image or a uint8 array; got "
                             f"{type(source).__name__}")
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{name}: empty image ({image.width}x{image.height})")
    try:  # a PIL image given lazily opened is decoded only here
        image.load()
        image = _upright(image)
        if image.mode in _WIDE_MODES:
            image = _to_eight_bits(image, name)
        image = _on_white(image)
        return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: not a readable image ({_one_line(exc) or type(exc).__name__})") from None


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
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)) or (
            isinstance(images, np.ndarray) and images.dtype in (np.uint8, np.uint16) and images.ndim in (2, 3)):
        images = [images]
    try:
        images = list(images)
    except TypeError:
        raise TypeError(f"images must be an image (a path, encoded bytes, a PIL image or an array) or a list of "
                        f"them, got {type(images).__name__}") from None
    batch = [preprocess_image(load_image(image), config) for image in images]
    if not batch:
        return np.zeros((0, 3, config.height, config.max_width), np.float32)
    return np.stack(batch)


# Finding images -------------------------------------------------------------------------------

def _is_regular(path):
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _walk(top):
    """Pre-order walk of ``top``: yields (folder, sorted visible entry names, error or None).

    Symbolic links to folders are followed, each real folder once, so loops end.
    """
    seen = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        except OSError as exc:
            yield folder, [], exc
            continue
        yield folder, names, None
        subfolders = [os.path.join(folder, n) for n in names if os.path.isdir(os.path.join(folder, n))]
        stack.extend(reversed(subfolders))


def _files_under(top):
    """Regular files under ``top`` (sorted per folder, folders in order); unreadable folders are
    returned as themselves, so that reading them reports the problem."""
    found = []
    for folder, names, error in _walk(top):
        if error is not None:
            found.append(folder)
            continue
        found += [os.path.join(folder, n) for n in names
                  if _image_name(n) and _is_regular(os.path.join(folder, n))]
    return found


def _strip_curdir(path):
    if path == os.curdir:
        return ""
    prefix = os.curdir + os.sep
    return path[len(prefix):] if path.startswith(prefix) else path


def _recursive_glob(pattern):
    """``glob.glob(pattern, recursive=True)`` without following symbolic-link loops forever."""
    head, tail = os.path.splitdrive(pattern)
    parts = [p for p in tail.split(os.sep) if p]
    current = [head + os.sep if tail.startswith(os.sep) else head]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        matched = []
        for base in current:
            if part == "**":
                for folder, names, error in _walk(base or os.curdir):
                    if error is None:
                        folder = folder if base else _strip_curdir(folder)
                        matched.append(folder)
                        if last:
                            matched += [os.path.join(folder, n) for n in names]
            elif glob.has_magic(part):
                try:
                    names = os.listdir(base or os.curdir)
                except OSError:
                    continue
                matched += [os.path.join(base, n) for n in sorted(names) if fnmatch.fnmatchcase(n, part)
                            and (part.startswith(".") or not n.startswith("."))]
            else:
                matched.append(os.path.join(base, part))
        current = list(dict.fromkeys(matched))
    return [p for p in current if p]


def _image_name(name):
    """True for a file name with an image extension Pillow knows (folders also hold labels and notes)."""
    return os.path.splitext(name)[1].lower() in Image.registered_extensions()


def find_images(paths, *, recursive=False):
    """Expand files, folders (their image files, sorted; subfolders with ``recursive``) and globs.

    From folders only files with an image extension are taken (a labels file beside the images
    is not an input); only regular files are taken from folders and globs (FIFOs, sockets and
    devices are skipped unopened; symbolic-link loops end). Names given directly are kept as they are, and so are
    names that match nothing, so that reading them reports the problem.
    """
    found = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            if recursive:
                found += _files_under(path)
            else:
                try:
                    names = sorted(os.listdir(path))
                except OSError:
                    found.append(path)  # reading it reports why
                    continue
                found += [os.path.join(path, f) for f in names
                          if not f.startswith(".") and _image_name(f) and _is_regular(os.path.join(path, f))]
        elif not os.path.lexists(path) and glob.has_magic(path):
            matches = _recursive_glob(path) if recursive and "**" in path else glob.glob(path)
            found += sorted(p for p in matches if _is_regular(p)) or [path]
        else:
            found.append(path)
    return found
