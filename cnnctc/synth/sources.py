"""What scene images are drawn with: font files that have every glyph the text needs, and
background photographs (the user's folder, else scikit-image's sample photos, public domain and CC0)."""
import collections
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from ..errors import CnnctcError, shown

__all__ = ["scene_fonts", "font_files", "Backgrounds", "FONT_FOLDERS", "NEEDED_SYMBOLS", "SKIMAGE_PHOTOS"]

# Where Debian (and most Linux systems) keep fonts; `cnnctc render --style scene` uses every usable one.
FONT_FOLDERS = ("/usr/share/fonts", "/usr/local/share/fonts")
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
# A font must draw all of these to be used for the default mix (letters, digits, and the
# punctuation of dates, prices and codes).
NEEDED_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-/.$%"
_MAX_FONT_BYTES = 64 * 2**20
# Families whose code points for letters draw other shapes (symbols, dingbats, Greek, math).
_NOT_LATIN_TEXT = re.compile(r"symbol|dingbat|d050000l|math|emoji|wingding|webding", re.IGNORECASE)

# scikit-image's sample photographs used as backgrounds: none shows text. Licences from
# skimage.data's docstrings: public domain (astronaut, rocket, hubble_deep_field) or CC0.
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "grass.png", "gravel.png",
                  "rocket.jpg", "hubble_deep_field.jpg", "motorcycle_left.png")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_MAX_BACKGROUNDS = 10_000
_BACKGROUND_SIDE = 640  # backgrounds are shrunk to at most this side once, when loaded


def font_files(paths):
    """The font files in ``paths`` (files, or folders searched recursively), sorted, without duplicates."""
    found = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for folder, dirs, names in os.walk(path):
                dirs.sort()
                found += [os.path.join(folder, n) for n in sorted(names)
                          if n.lower().endswith(_FONT_SUFFIXES) and _regular(os.path.join(folder, n))]
        elif not os.path.exists(path):
            raise CnnctcError(f"{path}: no such font file or folder")
        elif not _regular(path):
            raise CnnctcError(f"{path}: not a regular file; give font files (or folders of them)")
        else:
            found.append(path)
    return sorted(dict.fromkeys(found))


def _regular(path):
    """Whether ``path`` is a regular file (a FIFO or a device would block or never end when read)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _usable(path, symbols):
    """Whether ``path`` is a font that draws every one of ``symbols`` distinctly from its missing box."""
    from ..render import missing_glyphs
    try:
        if os.path.getsize(path) > _MAX_FONT_BYTES:
            return False
        if _NOT_LATIN_TEXT.search(" ".join(ImageFont.truetype(path, 16).getname())):
            return False
        return not missing_glyphs(path, symbols)
    except (OSError, ValueError):
        return False


def scene_fonts(fonts=None, *, symbols=NEEDED_SYMBOLS):
    """The fonts a scene render uses: of ``fonts`` (files or folders; default every installed
    font), those that draw all of ``symbols``. Refused in one line when none does."""
    candidates = font_files(fonts if fonts is not None else [f for f in FONT_FOLDERS if os.path.isdir(f)])
    symbols = "".join(sorted(set(symbols) - set(" ")))
    usable = [path for path in candidates if _usable(path, symbols)]
    if not usable:
        where = "the given fonts" if fonts is not None else f"the installed fonts ({', '.join(FONT_FOLDERS)})"
        raise CnnctcError(f"none of {where} draws all of the symbols {shown(symbols)}; install Debian's fonts-dejavu-core "
                          "fonts-liberation fonts-noto-core (or more), or give --font files that do")
    return usable


def file_sha256(path):
    from ..download import sha256_file   # the package's one way of hashing a file
    return sha256_file(path)


def _skimage_photos():
    try:
        import skimage.data
    except ImportError:
        return []
    folder = Path(skimage.data.__file__).parent
    return [folder / name for name in SKIMAGE_PHOTOS if (folder / name).is_file()]


class Backgrounds:
    """Background photographs: the images in ``folder``, else scikit-image's sample photos when
    scikit-image is installed (the ``synth`` extra), else none (gradients, noise and textures are
    drawn either way). Photos are decoded when first drawn from, shrunk to at most 640 pixels a
    side, and at most ``_CACHED`` are kept decoded, so a large folder costs little memory."""

    def __init__(self, folder=None):
        if folder is not None:
            if not os.path.isdir(folder):
                raise CnnctcError(f"{folder}: no such folder of background images")
            paths = _image_files(folder)
            self.source = str(folder)
        else:
            paths = _skimage_photos()
            self.source = "scikit-image sample photos" if paths else None
        self.paths = [p for p in paths[:_MAX_BACKGROUNDS] if _load(p) is not None]
        if folder is not None and not self.paths:
            raise CnnctcError(f"{folder}: holds no readable background image (PNG, JPEG, ... of 16 to "
                              f"{_MAX_PIXELS // 10**6} million pixels)")
        self._cache = collections.OrderedDict()

    def __getstate__(self):  # worker processes decode what they draw from themselves
        return {"paths": self.paths, "source": self.source}

    def __setstate__(self, state):
        self.__dict__.update(state, _cache=collections.OrderedDict())

    @property
    def images(self):
        return self.paths

    def describe(self):
        return {"source": self.source, "images": [{"file": p.name, "sha256": file_sha256(p)} for p in self.paths]}

    def _photo(self, index):
        photo = self._cache.pop(index, None)
        if photo is None:
            photo = _load(self.paths[index])
        self._cache[index] = photo
        while len(self._cache) > _CACHED:
            self._cache.popitem(last=False)
        return photo

    def crop(self, rng, width, height):
        """A random crop of a random photo, resized to ``width`` x ``height`` (None when there are none)."""
        if not self.paths:
            return None
        photo = self._photo(int(rng.integers(len(self.paths))))
        ph, pw = photo.shape[:2]
        scale = rng.uniform(0.3, 1.0)
        ch = max(8, min(ph, int(ph * scale * rng.uniform(0.15, 0.5))))
        cw = max(8, min(pw, int(ch * width / max(height, 1) * rng.uniform(0.6, 1.6))))
        y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
        patch = Image.fromarray(photo[y:y + ch, x:x + cw])
        return np.asarray(patch.resize((width, height), Image.BILINEAR), dtype=np.float32)


def _image_files(folder):
    """The image files under ``folder`` (sorted), looking at no more than ``_MAX_VISITED`` entries: a
    backgrounds folder given by mistake (``/``) is refused soon, not walked whole."""
    found, visited = [], 0
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        visited += len(dirs) + len(names)
        if visited > _MAX_VISITED:
            raise CnnctcError(f"{folder}: more than {_MAX_VISITED:,} files and folders to look through; give a "
                              f"folder of background photos (at most {_MAX_BACKGROUNDS:,} are used)")
        found += [Path(root) / n for n in names if n.lower().endswith(_IMAGE_SUFFIXES) and _regular(Path(root) / n)]
    return sorted(found)


_MAX_VISITED = 200_000
_CACHED = 32
_MAX_PIXELS = 50_000_000  # a larger "photo" is skipped before it is decoded


def _load(path):
    """``path`` decoded as RGB and shrunk to at most 640 pixels a side, or None when it is not a usable
    image (unreadable, under 16 pixels a side, or over 50 million pixels). Pillow's warnings stay quiet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                if image.width * image.height > _MAX_PIXELS:
                    return None
                image.draft("RGB", (_BACKGROUND_SIDE, _BACKGROUND_SIDE))
                image = image.convert("RGB")
                image.thumbnail((_BACKGROUND_SIDE, _BACKGROUND_SIDE))
                if min(image.size) < 16:
                    return None
                return np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None
