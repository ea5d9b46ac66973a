"""Synthetic word images for tests and demos, drawn with Pillow and common Debian fonts.

The fonts are an input like the seed: the same words, seed, font files and Pillow version give
the same pixels, so a rendered set's marker records the font files with their SHA-256 and the
Pillow version.
"""
import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import stat
import tempfile
import unicodedata
from pathlib import Path

import PIL
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ._checks import MAX_RENDER_COUNT
from .alphabet import alphabet_problem
from ._files import Busy, exclusive_lock, umask_mode
from .errors import CnnctcError, shown

__all__ = ["render_word", "find_fonts", "resolve_fonts", "random_words", "write_word_images", "FONT_CANDIDATES",
           "MAX_COUNT", "MARKER"]

MAX_COUNT = MAX_RENDER_COUNT  # images one render may draw; more is a usage error
_MAX_FONT_BYTES = 64 * 2**20  # no font is this large; a bigger "font" is refused before it is read

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


def resolve_fonts(fonts=None):
    """The font files a render uses: ``fonts`` (checked: regular, loadable files), else every
    installed candidate, else ``[None]`` (Pillow's own font)."""
    if fonts is None:
        return find_fonts() or [None]
    if isinstance(fonts, (str, os.PathLike)):
        raise CnnctcError("fonts must be a list of font files, not one path")
    fonts = [os.fspath(font) for font in fonts]
    if not fonts:
        raise CnnctcError("fonts is empty; give font files, or None for the installed ones")
    for font in fonts:
        try:
            st = os.stat(font)
        except OSError as exc:
            raise CnnctcError(f"{font}: cannot read the font ({exc.strerror or exc})") from None
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_FONT_BYTES:
            raise CnnctcError(f"{font}: not a font file (a TrueType or OpenType file of at most "
                              f"{_MAX_FONT_BYTES // 2**20} MB)")
        try:
            _font(font, 32)
        except (OSError, ValueError) as exc:
            raise CnnctcError(f"{font}: not a usable font ({exc})") from None
    return fonts


def _font_record(font):
    if font is None:
        return {"file": None, "note": "Pillow's built-in font"}
    with open(font, "rb") as f:
        digest = hashlib.sha256(f.read(_MAX_FONT_BYTES + 1)).hexdigest()
    return {"file": os.path.abspath(font), "sha256": digest}


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
    """``count`` random strings over ``alphabet``; a space or other white space is never first or
    last (a label with a space at its edge cannot match its image)."""
    rng = rng or random.Random(0)
    edges = "".join(c for c in alphabet if not c.isspace()) or alphabet

    def word(length):
        return "".join(rng.choice(edges if i in (0, length - 1) else alphabet) for i in range(length))
    return [word(rng.randint(min_length, max_length)) for _ in range(count)]


def missing_glyphs(font, symbols):
    """The symbols ``font`` (a file, or None for Pillow's own) has no glyph for: it would draw its
    "missing" box for them (compared with what it draws for a code point no font has)."""
    face = _font(font, 32)

    def drawn(text):
        mask = face.getmask(text)
        return mask.size, bytes(mask)
    nothing = drawn("\U0010fffd")
    return [s for s in symbols if not s.isspace() and drawn(s) == nothing]


MARKER = ".cnnctc-render"  # written into every set write_word_images makes; lists its files and inputs
_BAD_IN_WORDS = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\0": "a NUL"}
_OUR_NAMES = re.compile(r"^(\d{5,}\.png|labels\.tsv|\.cnnctc-render)$")


def _check_text(text, what):
    if not isinstance(text, str):
        raise CnnctcError(f"{what} must be text, not {type(text).__name__}")
    for char, name in _BAD_IN_WORDS.items():
        if char in text:
            raise CnnctcError(f"{what} {shown(text)} contains {name}, which labels.tsv cannot hold")


def invisible_symbols(text):
    """The format characters in ``text`` (zero-width space, soft hyphen, direction marks: Unicode's
    Cf): a label holding one says a symbol the image does not show."""
    return sorted({c for c in text if unicodedata.category(c) == "Cf"})


def _refuse_invisible(text, what):
    found = invisible_symbols(text)
    if found:
        codes = ", ".join(f"U+{ord(c):04X}" for c in found[:5])
        raise CnnctcError(f"{what} holds invisible format characters ({codes}) that the image would not show; "
                          "leave them out")


def _check_request(count, alphabet, words):
    """(alphabet, words) as they will be drawn, in Unicode's composed form (NFC), or a CnnctcError."""
    if words is None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise CnnctcError(f"count must be a whole number of at least 1, got {count!r}")
        if count > MAX_COUNT:
            raise CnnctcError(f"count must be at most {MAX_COUNT:,} images per set, got {count:,}; render "
                              "several sets and give make-lmdb or finetune each of them")
        if not isinstance(alphabet, str) or not alphabet.strip():
            raise CnnctcError(f"the alphabet {shown(alphabet)} has no symbols; give the symbols to draw words from")
        alphabet = unicodedata.normalize("NFC", alphabet)
        problem = alphabet_problem(alphabet)
        if problem:
            raise CnnctcError(f"the alphabet {shown(alphabet)} {problem}")
        _refuse_invisible(alphabet, "the alphabet")
        return alphabet, None
    if isinstance(words, str):
        raise CnnctcError("words must be a list of words, not one string")
    words = list(words)
    if not words:
        raise CnnctcError("no words to draw (words is empty)")
    if len(words) > MAX_COUNT:
        raise CnnctcError(f"at most {MAX_COUNT:,} words per set, got {len(words):,}")
    for number, word in enumerate(words, 1):
        _check_text(word, f"word {number}")
        if not word.strip():
            raise CnnctcError(f"word {number} is empty; every word needs at least one visible symbol")
        _refuse_invisible(word, f"word {number}")
    return alphabet, [unicodedata.normalize("NFC", word) for word in words]


def _rendered_set(folder):
    """Whether ``folder`` holds exactly a set write_word_images made (its marker names every file)."""
    folder = Path(folder)
    try:
        names = set(os.listdir(folder))
        with open(folder / MARKER, encoding="utf-8") as f:
            listed = set(json.load(f)["files"])
        regular = all(stat.S_ISREG(os.lstat(folder / name).st_mode) for name in names)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return regular and "labels.tsv" in names and names <= listed | {MARKER}


def _check_out(out, overwrite):
    """'new' (absent), 'empty' (an empty folder) or 'replace' (a rendered set we may replace)."""
    if not os.path.lexists(out):
        ancestor = out.parent
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise CnnctcError(f"{out}: {ancestor} is not a folder; choose another OUT")
        return "new"
    if out.is_symlink():
        raise CnnctcError(f"{out} is a symbolic link; name a folder (not a link) to render into")
    if not out.is_dir():
        raise CnnctcError(f"{out} exists and is not a folder; choose another OUT")
    try:
        empty = not os.listdir(out)
    except OSError as exc:
        raise CnnctcError(f"{out}: cannot read the folder ({exc.strerror or exc})") from None
    if empty:
        return "empty"
    if not _rendered_set(out):
        raise CnnctcError(f"{out} already holds other files; render into a new or empty folder (--overwrite "
                          "replaces only a set rendered by this command)")
    if not overwrite:
        raise CnnctcError(f"{out} already holds a rendered set; pass --overwrite to replace it, or choose "
                          "another OUT")
    return "replace"




def _busy(out):
    return CnnctcError(f"{out}: another `cnnctc render` is writing this set right now; wait for it to finish, "
                       "or choose another OUT")


@contextlib.contextmanager
def _claimed(out, lock_path):
    """Hold ``lock_path`` (a lock file, removed at the end; or the empty folder ``out`` itself) for the
    whole render of ``out``: a second writer is refused."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(lock_path, remove=True))
        except Busy:
            raise _busy(out) from None
        except OSError as exc:
            raise CnnctcError(f"{out}: cannot write there ({exc.strerror or exc})") from None
        yield


def _remove_leftovers(out):
    """Remove the work folders a killed render of ``out`` left beside it (we hold its lock, so no
    live render owns them). Only folders holding nothing but rendered files are touched."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.tmp(\.old)?$")
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent):
            if not pattern.match(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if all(_OUR_NAMES.match(name) for name in os.listdir(entry.path)):
                    shutil.rmtree(entry.path)


def _render_into(folder, items, inputs):
    """Write ``items`` ((PIL image or PNG bytes, label) pairs) as NNNNN.png with labels.tsv and the marker."""
    lines, names = [], []
    for number, (image, label) in enumerate(items):
        name = f"{number:05d}.png"
        if isinstance(image, bytes):
            (folder / name).write_bytes(image)
        else:
            image.save(folder / name)
        lines.append(f"{name}\t{label}\n")
        names.append(name)
    (folder / "labels.tsv").write_text("".join(lines), encoding="utf-8")
    # The marker goes last: a folder without it is never taken for a finished set.
    (folder / MARKER).write_text(json.dumps({"files": names + ["labels.tsv"], **inputs}) + "\n", encoding="utf-8")


def _render_in_empty(out, items, count, inputs):
    """Draw straight into an empty folder whose parent we cannot write; on failure remove what we drew."""
    try:
        _render_into(out, items, inputs)
    except BaseException:
        made = [f"{number:05d}.png" for number in range(count)] + ["labels.tsv", MARKER]
        for name in made:
            try:
                (out / name).unlink()
            except OSError:
                pass
        raise


def _put_in_place(staging, out, state):
    """Rename ``staging`` to ``out``, re-checking ``out`` at that moment: only an empty folder or,
    for 'replace', a set rendered here may be there; anything else someone put there stays."""
    if state != "replace":
        try:
            os.rename(staging, out)  # atomically replaces an empty folder, never anything else
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise CnnctcError(f"{out} appeared while the images were drawn and is not empty; it was left "
                                  "as it is: choose another OUT") from None
            raise
        return None
    old = staging.with_name(staging.name + ".old")
    os.rename(out, old)
    if not _rendered_set(old):  # replaced by something else since it was checked: put it back
        os.rename(old, out)
        raise CnnctcError(f"{out} changed while the images were drawn and is no longer a rendered set; it was "
                          "left as it is")
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        raise
    return old


def write_word_images(out, count=100, *, alphabet="0123456789abcdefghijklmnopqrstuvwxyz", words=None, fonts=None,
                      seed=0, noise=False, overwrite=False):
    """Draw words to ``out/NNNNN.png`` with a ``labels.tsv`` (``name<TAB>word``); returns its path.
    An ``out`` ending in ``.lmdb`` becomes an LMDB instead (returned), written as make-lmdb writes one.

    Random words over ``alphabet`` unless ``words`` is given (at most ``MAX_COUNT``); fonts cycle
    through ``fonts`` (default: every installed candidate, see :func:`resolve_fonts`). ``out``
    must be new or an empty folder; with ``overwrite`` it may also be a set this function
    rendered before (recognised by its ``.cnnctc-render`` marker, which also records the font
    files with their SHA-256, the Pillow version, the seed and ``noise``), never a folder holding
    anything else. The set is drawn in a temporary folder beside ``out`` and renamed into place,
    so a failure leaves ``out`` as it was; folders and files get the modes the umask gives. A
    second render into the same ``out`` is refused while the first runs, and work folders a
    killed render left are removed. Raises :class:`CnnctcError` (one line) for bad arguments, a
    busy or unwritable ``out``.
    """
    alphabet, words = _check_request(count, alphabet, words)
    out = Path(out)
    fonts = resolve_fonts(fonts)
    to_lmdb = out.name.endswith(".lmdb")
    state = None if to_lmdb else _check_out(out, overwrite)
    rng = random.Random(seed)
    words = words if words is not None else random_words(count, alphabet, rng=rng)
    symbols = sorted(set(alphabet if words is None else "".join(words)))
    for font in fonts:
        missing = missing_glyphs(font, symbols)
        if missing:
            listed = " ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            name = os.path.basename(font) if font else "Pillow's own font"
            raise CnnctcError(f"{name} has no glyph for {len(missing)} of the symbols ({listed}): it would draw boxes "
                              "that the labels do not say; give --font files that have them, or leave them out")
    inputs = {"fonts": [_font_record(font) for font in fonts], "pillow": PIL.__version__, "seed": seed,
              "noise": bool(noise)}
    items = ((render_word(word, font=fonts[number % len(fonts)], rng=rng, noise=noise), word)
             for number, word in enumerate(words))
    if to_lmdb:
        from .data.writer import write_lmdb
        write_lmdb(out, ((_png(image), word) for image, word in items), overwrite=overwrite,
                   records={b"cnnctc-render": json.dumps(inputs).encode()})
        return out
    return write_image_set(out, items, len(words), inputs, state)


def _png(image):
    import io
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_image_set(out, items, count, inputs, state):
    """Put the ``count`` (image, label) ``items`` in place as the set ``out`` (checked by
    :func:`check_set_out`, which gave ``state``), drawn in a temporary folder beside it."""
    if state == "empty" and not os.access(out.parent, os.W_OK | os.X_OK):
        with _claimed(out, out):  # nothing there to keep: draw in place
            if os.listdir(out) and _check_out(out, False) != "empty":  # filled meanwhile: says by what
                raise _busy(out)
            try:
                _render_in_empty(out, items, count, inputs)
            except OSError as exc:
                raise CnnctcError(f"{out}: cannot write the images ({exc.strerror or exc})") from None
        return out / "labels.tsv"
    overwrite = state == "replace"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnctcError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    with _claimed(out, out.parent / f".cnnctc-render.{out.name}.lock"):
        _remove_leftovers(out)
        state = _check_out(out, overwrite)  # again, now that no other render can change it
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
            os.chmod(staging, umask_mode(folder=True))  # mkdtemp makes it 0700; the set gets the usual modes
        except OSError as exc:
            raise CnnctcError(f"{out}: cannot write there ({exc.strerror or exc})") from None
        old = None
        try:
            try:
                _render_into(staging, items, inputs)
                old = _put_in_place(staging, out, state)
            except OSError as exc:
                raise CnnctcError(f"{out}: cannot write the images ({exc.strerror or exc})") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    return out / "labels.tsv"


def check_set_out(out, overwrite):
    """'new', 'empty' or 'replace' for a set folder ``out``, or a one-line CnnctcError."""
    return _check_out(Path(out), overwrite)
