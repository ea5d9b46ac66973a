"""One scene-text word image: text layer (fill, outline, shadow), geometry (condensed or wide,
italic shear, rotation, perspective, curve), background (flat, gradient, noise texture or photo),
then camera degradation (blur, noise, low resolution, JPEG), cropped tight or loose around the word."""
import dataclasses
import functools
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["SceneConfig", "draw_scene"]


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How strong the effects are; ``height`` is the height of the images written."""
    height: int = 32
    min_font_size: int = 26
    max_font_size: int = 60
    photo_share: float = 0.4        # backgrounds taken from photographs (when there are any)
    light_on_dark: float = 0.5      # light text on a dark background
    outline_share: float = 0.15
    shadow_share: float = 0.15
    curve_share: float = 0.08
    jpeg_share: float = 0.5
    effects: float = 1.0            # scales the chance of every effect: 0 draws flat, upright, sharp words


@functools.lru_cache(maxsize=512)
def _face(path, size):
    return ImageFont.truetype(path, size)


def _chance(rng, share, config):
    return rng.random() < share * config.effects


def _luminance(rgb):
    rgb = np.asarray(rgb, dtype=np.float32)
    return float(rgb[..., 0].mean() * 0.299 + rgb[..., 1].mean() * 0.587 + rgb[..., 2].mean() * 0.114)


def _colour_pair(rng, light_on_dark):
    """(text colour, background colour) with at least ~70 levels of luminance between them."""
    dark_bg = rng.random() < light_on_dark
    for _ in range(20):
        bg = rng.integers(0, 256, 3)
        fg = rng.integers(0, 256, 3)
        if rng.random() < 0.35:  # grey or near-black/white text is common on signs
            fg = np.full(3, rng.integers(0, 60) if not dark_bg else rng.integers(195, 256))
        lb, lf = _luminance(bg), _luminance(fg)
        if (lf - lb if dark_bg else lb - lf) >= 70:
            return fg.astype(np.float32), bg.astype(np.float32)
    return (np.float32([240, 240, 240]), np.float32([20, 20, 20])) if dark_bg else \
        (np.float32([15, 15, 15]), np.float32([235, 235, 235]))


def _text_masks(text, face, rng, outline, config):
    """(fill mask, outline mask or None) as float arrays 0..1, with a margin around the word."""
    size = face.size
    tracking = rng.uniform(-0.04, 0.25) * size if _chance(rng, 0.25, config) else 0.0
    bold = int(rng.integers(1, 1 + max(1, size // 18))) if _chance(rng, 0.15, config) else 0
    border = int(rng.integers(1, 2 + size // 14)) if outline else 0
    pad = size // 2 + border + bold + 2
    widths = [face.getlength(c) for c in text]
    total = sum(widths) + tracking * max(len(text) - 1, 0)
    left, top, right, bottom = face.getbbox(text)
    width = int(max(total, right - left)) + 2 * pad + 2
    height = int(bottom - min(top, 0)) + 2 * pad + 2
    masks = []
    for stroke in ([bold] + ([bold + border] if outline else [])):
        mask = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(mask)
        if tracking:
            x = pad - left
            for char, w in zip(text, widths):
                draw.text((x, pad - min(top, 0)), char, font=face, fill=255, stroke_width=stroke, stroke_fill=255)
                x += w + tracking
        else:
            draw.text((pad - left, pad - min(top, 0)), text, font=face, fill=255, stroke_width=stroke, stroke_fill=255)
        masks.append(mask)
    return masks[0], (masks[1] if outline else None)


def _perspective_coefficients(src, dst):
    """PIL's PERSPECTIVE coefficients mapping output points ``dst`` back to input points ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(rows, dtype=np.float64), np.array(src, dtype=np.float64).reshape(8))


def _geometry(rng, width, height, config):
    """Where the four corners of a ``width`` x ``height`` layer go: condensed or wide, sheared, rotated, tilted."""
    squeeze = rng.uniform(0.7, 1.25) if _chance(rng, 0.4, config) else 1.0
    shear = rng.uniform(-0.35, 0.35) if _chance(rng, 0.3, config) else 0.0
    angle = np.deg2rad(rng.normal(0, 2.5 * config.effects) if not _chance(rng, 0.1, config) else rng.uniform(-10, 10))
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    centre = np.array([width / 2, height / 2])
    moved = (corners - centre) * [squeeze, 1.0]
    moved[:, 0] += shear * -moved[:, 1]
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = moved @ rotation.T
    if _chance(rng, 0.35, config):  # perspective: the corners move independently by a few percent of the height
        moved += rng.normal(0, 0.06 * height, (4, 2))
    moved -= moved.min(axis=0)
    return corners, moved


def _warp(masks, rng, config):
    width, height = masks[0].size
    src, dst = _geometry(rng, width, height, config)
    out_w, out_h = int(np.ceil(dst[:, 0].max())) + 1, int(np.ceil(dst[:, 1].max())) + 1
    coefficients = _perspective_coefficients(src, dst)
    return [m.transform((out_w, out_h), Image.PERSPECTIVE, tuple(coefficients), Image.BILINEAR) if m is not None
            else None for m in masks]


def _curve(arrays, rng):
    """Bend the word along a gentle arc (each column moved up or down)."""
    height, width = arrays[0].shape
    amplitude = rng.uniform(0.05, 0.18) * height
    phase = rng.uniform(0, np.pi)
    shifts = np.round(amplitude * np.sin(np.linspace(0, np.pi, width) + phase - np.pi / 2)).astype(int)
    pad = int(np.abs(shifts).max()) + 1
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        padded = np.zeros((height + 2 * pad, width), np.float32)
        for x in range(width):
            padded[pad + shifts[x]:pad + shifts[x] + height, x] = a[:, x]
        out.append(padded)
    return out


def _background(rng, width, height, colour, backgrounds, config):
    kind = rng.random()
    if backgrounds is not None and kind < config.photo_share * config.effects:
        photo = backgrounds.crop(rng, width, height)
        if photo is not None:
            keep = rng.uniform(0.25, 0.9)  # how much of the photo shows through the background colour
            return photo * keep + colour * (1 - keep)
    kind = rng.random()
    if kind < 0.35 or config.effects == 0:
        return np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    if kind < 0.65:  # a linear gradient towards a nearby colour
        other = np.clip(colour + rng.normal(0, 40, 3), 0, 255)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = (xx * np.cos(angle) + yy * np.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        return colour * (1 - t[..., None]) + other * t[..., None]
    # a texture: smooth noise at a random scale
    scale = int(rng.integers(2, 12))
    small = rng.normal(0, rng.uniform(8, 35), (max(2, height // scale), max(2, width // scale), 3))
    noise = np.asarray(Image.fromarray(np.clip(small + 128, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC), np.float32) - 128
    return np.clip(colour + noise, 0, 255)


def _crop_box(mask, rng):
    """A box around the ink of ``mask``, with tight or loose margins (sometimes cutting a hair into it)."""
    ys, xs = np.nonzero(mask > 0.2)
    if len(xs) == 0:
        return 0, 0, mask.shape[1], mask.shape[0]
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    h = y1 - y0
    loose = rng.random() < 0.3
    margins = rng.uniform(-0.04, 0.35 if loose else 0.12, 4) * h
    margins[:2] *= rng.uniform(0.5, 2.0)  # left and right vary more
    box = (int(x0 - margins[0]), int(y0 - margins[2]), int(x1 + margins[1]), int(y1 + margins[3]))
    return box


def _take(array, box):
    """``array``'s pixels in ``box``, zero outside it."""
    x0, y0, x1, y1 = box
    h, w = array.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0) + array.shape[2:], array.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def _degrade(image, rng, config):
    """Camera effects on the composed image: blur, noise, low resolution, JPEG; then the output height."""
    if _chance(rng, 0.5, config):
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6) * image.height / 48))
    if _chance(rng, 0.08, config):  # motion blur along the line
        length = int(rng.integers(2, 6))
        kernel = [0.0] * 25
        for i in range(length):
            kernel[12 - length // 2 + i] = 1.0 / length
        image = image.filter(ImageFilter.Kernel((5, 5), kernel, 1))
    if _chance(rng, 0.3, config):
        low = int(rng.integers(10, max(11, config.height)))
        image = image.resize((max(1, round(image.width * low / image.height)), low), Image.BILINEAR)
    width = max(1, round(image.width * config.height / image.height))
    image = image.resize((width, config.height), Image.BICUBIC)
    if _chance(rng, 0.5, config):
        array = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(2, 14), (image.height, image.width, 1))
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if _chance(rng, config.jpeg_share, config):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(15, 90)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def draw_scene(text, font, rng, *, backgrounds=None, config=SceneConfig()):
    """``text`` drawn with the font file ``font`` as a scene-text word crop: an RGB image
    ``config.height`` pixels high. ``rng`` is a numpy Generator (all randomness comes from it)."""
    size = int(rng.integers(config.min_font_size, config.max_font_size + 1))
    face = _face(font, size)
    outline = _chance(rng, config.outline_share, config)
    fill, border = _text_masks(text, face, rng, outline, config)
    fill, border = _warp([fill, border], rng, config)
    arrays = [np.asarray(fill, np.float32) / 255, None if border is None else np.asarray(border, np.float32) / 255]
    if _chance(rng, config.curve_share, config):
        arrays = _curve(arrays, rng)
    fill_a, border_a = arrays
    box = _crop_box(fill_a if border_a is None else border_a, rng)
    fill_a = _take(fill_a, box)
    border_a = None if border_a is None else _take(border_a, box)
    height, width = fill_a.shape
    fg, bg = _colour_pair(rng, config.light_on_dark)
    canvas = _background(rng, width, height, bg, backgrounds, config)
    if backgrounds is not None and _luminance(canvas) and abs(_luminance(canvas) - _luminance(fg)) < 60:
        fg = np.float32([255, 255, 255]) if _luminance(canvas) < 128 else np.float32([0, 0, 0])
    canvas = np.array(canvas, np.float32)
    ink = fill_a if border_a is None else border_a
    if _chance(rng, config.shadow_share, config):
        dx, dy = (int(v) for v in rng.integers(-max(2, height // 10), max(3, height // 10) + 1, 2))
        shadow = np.roll(np.roll(ink, dy, axis=0), dx, axis=1)
        shadow = np.asarray(Image.fromarray((shadow * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(rng.uniform(0, 2))), np.float32)[..., None] / 255
        shade = bg * rng.uniform(0.1, 0.5) if _luminance(bg) > 100 else np.minimum(bg + 120, 255)
        canvas = canvas * (1 - shadow * 0.8) + shade * shadow * 0.8
    if border_a is not None:
        edge = np.clip(255 - fg + rng.normal(0, 30, 3), 0, 255)
        canvas = canvas * (1 - border_a[..., None]) + edge * border_a[..., None]
    if _chance(rng, 0.15, config):  # a gradient across the ink
        other = np.clip(fg + rng.normal(0, 50, 3), 0, 255)
        t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        colour = fg * (1 - t) + other * t
    else:
        colour = fg
    opacity = rng.uniform(0.75, 1.0) if _chance(rng, 0.2, config) else 1.0
    alpha = fill_a[..., None] * opacity
    canvas = canvas * (1 - alpha) + colour * alpha
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return _degrade(image, rng, config)
