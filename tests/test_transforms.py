"""Preprocessing against a straightforward implementation of SPEC section 3, and CTC decoding."""
import io
import math

import numpy as np
import pytest
from PIL import Image

from cnnctc.decoding import ctc_greedy_decode
from cnnctc.registry import load_manifest
from cnnctc.transforms import ImageError, load_image, preprocess

MEAN = np.array([121.58949, 123.93914, 123.418655])
STD = np.array([65.70353, 65.142426, 68.61079])
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def reference(image):
    """SPEC section 3 written out plainly: RGB, resize, normalise in float64, CHW, repeat-pad.

    Transparent images are first composited onto white (RGB inputs are untouched by that step)."""
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
        alpha = rgba[:, :, 3:] / 255.0
        image = Image.fromarray(np.rint(rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8), "RGB")
    image = image.convert("RGB")
    w, h = image.size
    new_w = min(-(-32 * w // h), 100)
    x = np.array(image.resize((new_w, 32), Image.BICUBIC)).astype(np.float64)
    x = ((x - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)
    out = np.zeros((3, 32, 100), np.float32)
    for col in range(100):
        out[:, :, col] = x[:, :, min(col, new_w - 1)]
    return out


def random_image(rng, width, height, mode):
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        return rgb.convert("P", palette=Image.ADAPTIVE, colors=17)
    return rgb.convert(mode)


@pytest.mark.parametrize("size", [(100, 32), (320, 32), (1000, 20), (20, 300), (1, 1), (7, 5), (3, 64), (99, 33),
                                  (150, 48), (64, 64)])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "1"])
def test_matches_the_reference(size, mode):
    rng = np.random.default_rng(sum(size))
    image = random_image(rng, *size, mode)
    got = preprocess([image])
    assert got.shape == (1, 3, 32, 100) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], reference(image))


def test_every_input_kind_gives_the_same_tensor(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    path = tmp_path / "w.png"
    image.save(path)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    batch = preprocess([image, str(path), path, encoded.getvalue(), array])
    for row in batch[1:]:
        np.testing.assert_array_equal(row, batch[0])
    grey = rng.integers(0, 256, (40, 90), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess(grey)[0], reference(Image.fromarray(grey, "L")))
    np.testing.assert_array_equal(preprocess(grey[:, :, None])[0], preprocess(grey)[0])


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = (np.arange(50 * 80, dtype=np.uint32).reshape(50, 80) * 16 % 65536).astype(np.uint16)
    eight_bit = Image.fromarray(np.rint(values / 257.0).astype(np.uint8), "L")
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # a 16-bit grey PNG
    for source in (values, str(path)):
        np.testing.assert_array_equal(preprocess(source)[0], reference(eight_bit))


def test_padding_repeats_the_last_column_and_constants_come_from_the_manifest():
    image = Image.new("RGB", (10, 32), (200, 10, 30))
    image.putpixel((9, 0), (0, 0, 0))
    out = preprocess([image])[0]
    assert np.all(out[:, :, 10:] == out[:, :, 9:10])
    assert not np.allclose(out[:, :, 10:], 0)
    manifest = load_manifest()
    np.testing.assert_allclose(out[0, 5, 0], (200 - manifest.preprocess.mean[0]) / manifest.preprocess.std[0],
                               rtol=1e-6)


def test_width_is_capped_and_rounded_up():
    image = Image.new("RGB", (31, 30), "white")  # 32 * 31 / 30 = 33.07 -> 34 columns of image
    image.paste((0, 0, 0), (30, 0, 31, 30))
    out = preprocess([image])[0]
    dark = np.flatnonzero(out[0].mean(axis=0) < 0)
    assert dark.max() == 99 and dark.min() >= 31  # the black edge ends at column 33, then is repeated
    assert math.ceil(32 * 31 / 30) == 34


def test_bad_inputs_raise_image_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match="empty.png: not a readable image"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="text.png: not a readable image"):
        load_image(str(tmp_path / "text.png"))
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((4, 4), np.float32))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))


def one_hot_logits(classes, num_class=37, peak=10.0):
    logits = np.zeros((1, len(classes), num_class), np.float32)
    logits[0, np.arange(len(classes)), classes] = peak
    return logits


def test_greedy_decoding_rules():
    blank = 36
    a, b, c = ALPHABET.index("a"), ALPHABET.index("b"), ALPHABET.index("c")
    cases = {
        "ab": [a, a, blank, b, b],            # repeats merge
        "aa": [a, blank, a],                  # a blank separates repeats
        "": [blank] * 26,                     # all blanks
        "abc": [blank, a, b, blank, c, c],
        "0z": [0, 35],                        # class 0 is '0', a symbol, not the blank
    }
    for text, classes in cases.items():
        [prediction] = ctc_greedy_decode(one_hot_logits(classes), ALPHABET)
        assert prediction.text == text


def test_confidence_is_the_product_over_kept_columns():
    logits = np.full((1, 4, 37), -5.0, np.float32)
    logits[0, 0, 10] = 2.0   # 'a' (kept)
    logits[0, 1, 10] = 1.0   # 'a' repeated (merged, not counted)
    logits[0, 2, 36] = 3.0   # blank (not counted)
    logits[0, 3, 11] = 0.5   # 'b' (kept)
    probs = np.exp(logits[0].astype(np.float64))
    probs /= probs.sum(axis=1, keepdims=True)
    [prediction] = ctc_greedy_decode(logits, ALPHABET, with_chars=True)
    assert prediction.text == "ab"
    assert prediction.confidence == pytest.approx(probs[0, 10] * probs[3, 11])
    assert [c for c, _ in prediction.chars] == ["a", "b"]
    assert prediction.chars[1][1] == pytest.approx(probs[3, 11])
    [empty] = ctc_greedy_decode(one_hot_logits([36] * 5), ALPHABET)
    assert empty.confidence == 0.0


def test_decoding_checks_the_class_count():
    with pytest.raises(ValueError, match=r"\(B, T, 37\)"):
        ctc_greedy_decode(np.zeros((1, 26, 36)), ALPHABET)


def test_the_package_exports_the_user_api():
    import types
    import cnnctc
    image = Image.new("RGB", (50, 20), "white")
    np.testing.assert_array_equal(cnnctc.preprocess(image), preprocess([image]))
    for name in ("load", "Recognizer", "evaluate", "finetune", "fetch", "ctc_greedy_decode"):
        assert callable(getattr(cnnctc, name)) and not isinstance(getattr(cnnctc, name), types.ModuleType)
    with pytest.raises(AttributeError):
        cnnctc.no_such_name
