"""Synthetic word images for tests and demos, drawn with Pillow and common Debian fonts."""
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["render_word", "find_fonts", "random_words", "write_word_images", "FONT_CANDIDATES"]

# Debian's fonts-dejavu-core, fonts-liberation and fonts-freefont-ttf.
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSerif.ttf",
    "/usr/share/fonts/truetype/freefont/FreeMono.ttf",
)


def find_fonts():
    """The candidate fonts installed here (may be empty: render_word then uses Pillow's own font)."""
    return [path for path in FONT_CANDIDATES if os.path.isfile(path)]


def _font(path, size):
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size)


def render_word(text, *, font=None, size=32, rng=None, noise=False):
    """A dark word on a light background, RGB, about ``size`` pixels high plus a margin.

    ``rng`` (a random.Random) varies colours and margins; ``noise`` adds blur and a slant.
    """
    rng = rng or random.Random(0)
    face = _font(font, size)
    left, top, right, bottom = face.getbbox(text or " ")
    margin_x, margin_y = rng.randint(2, 8), rng.randint(2, 6)
    width, height = right - left + 2 * margin_x, bottom - top + 2 * margin_y
    background = tuple(rng.randint(190, 255) for _ in range(3))
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    image = Image.new("RGB", (max(width, 1), max(height, 1)), background)
    ImageDraw.Draw(image).text((margin_x - left, margin_y - top), text, font=face, fill=ink)
    if noise:
        shear = rng.uniform(-0.2, 0.2)
        image = image.transform(image.size, Image.AFFINE, (1, shear, -shear * height / 2, 0, 1, 0),
                                resample=Image.BILINEAR, fillcolor=background)
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    return image


def random_words(count, alphabet, *, min_length=2, max_length=8, rng=None):
    """``count`` random strings over ``alphabet``."""
    rng = rng or random.Random(0)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(min_length, max_length))) for _ in range(count)]


def write_word_images(out, count=100, *, alphabet="0123456789abcdefghijklmnopqrstuvwxyz", words=None, fonts=None,
                      seed=0, noise=False):
    """Draw words to ``out/NNNNN.png`` with a ``labels.tsv`` (``name<TAB>word``); returns its path.

    Random words over ``alphabet`` unless ``words`` is given; fonts cycle through ``fonts``
    (default: every installed candidate).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = list(words) if words else random_words(count, alphabet, rng=rng)
    fonts = list(fonts) if fonts is not None else (find_fonts() or [None])
    lines = []
    for number, word in enumerate(words):
        name = f"{number:05d}.png"
        render_word(word, font=fonts[number % len(fonts)], rng=rng, noise=noise).save(out / name)
        lines.append(f"{name}\t{word}\n")
    labels = out / "labels.tsv"
    labels.write_text("".join(lines), encoding="utf-8")
    return labels
