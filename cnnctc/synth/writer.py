"""Drawing a scene set: image ``i`` comes from its own seed ``(seed, i)``, so worker processes draw
disjoint chunks and the set is the same bytes whatever their number."""
import contextlib
import dataclasses
import io
import multiprocessing
import os

import numpy as np
from PIL import ImageFont

from .._checks import MAX_SCENE_WORKERS
from ..errors import CnnctcError, shown
from .scene import SceneConfig, draw_scene
from .sources import Backgrounds, file_sha256, scene_fonts
from .text import TextSource, label_for, word_problem

__all__ = ["SceneRecipe", "scene_images", "write_scene_images", "MAX_SCENE_WORKERS"]

_CHUNK = 64  # images per task handed to a worker
RECIPE_KEY = b"cnnctc-render"  # an LMDB set's record of its inputs (the folder form's .cnnctc-render marker)


class SceneRecipe:
    """Everything a scene set is drawn from: the text source, fonts (grouped by family, each family
    equally likely), backgrounds, the label alphabet and the effects' strengths."""

    def __init__(self, *, words=None, fonts=None, backgrounds=None, alphabet=None, config=SceneConfig(),
                 dictionary=None, max_length=13):
        self.text = TextSource(words, dictionary=dictionary, max_length=max_length)
        needed = "".join(sorted(set("".join(words)) - {" "})) if words is not None else None
        self.fonts = scene_fonts(fonts, **({"symbols": needed} if needed else {}))
        self.backgrounds = backgrounds if isinstance(backgrounds, Backgrounds) else Backgrounds(backgrounds)
        self.alphabet = alphabet
        self.config = config
        self.ordered = False  # True: image i shows the i-th word of the vocabulary
        families = {}
        for path in self.fonts:
            families.setdefault(ImageFont.truetype(path, 16).getname()[0], []).append(path)
        self.families = [families[name] for name in sorted(families)]

    def describe(self):
        """What a set's marker records: fonts with their SHA-256, backgrounds, text source, settings."""
        return {"style": "scene", "text": self.text.describe(), "label_alphabet": self.alphabet,
                "fonts": [{"file": os.path.abspath(p), "sha256": file_sha256(p)} for p in self.fonts],
                "backgrounds": self.backgrounds.describe(), "config": dataclasses.asdict(self.config)}

    def draw(self, seed, index):
        """(PNG bytes, label, text) of image ``index`` of the set seeded ``seed``."""
        rng = np.random.default_rng([seed, index])
        text = self.text.user_words[index] if self.ordered else self.text.sample(rng)
        return self._draw(rng, text)

    def _draw(self, rng, text):
        family = self.families[rng.integers(len(self.families))]
        font = family[rng.integers(len(family))]
        for _ in range(3):
            image = draw_scene(text, font, rng, backgrounds=self.backgrounds, config=self.config)
            if image.width >= 2:
                break
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue(), label_for(text, self.alphabet), text


_WORKER_RECIPE = None


def _init_worker(recipe):
    global _WORKER_RECIPE
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    # A worker's failures reach the parent with its results; what it would print itself (a broken
    # pipe's traceback when the parent was killed) is noise on the user's terminal.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    _WORKER_RECIPE = recipe


def _quiet_resource_tracker():
    """Start multiprocessing's resource tracker (if not yet running) with its stderr on /dev/null: when
    the parent is killed with SIGKILL it would warn about the pool's semaphores on the user's terminal.
    The tracker inherits descriptor 2, so it points at /dev/null for the moment the tracker starts."""
    from multiprocessing import resource_tracker
    saved = devnull = None
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        resource_tracker.ensure_running()
    except Exception:  # the tracker is a nicety; the pool starts one itself otherwise
        pass
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if devnull is not None:
            os.close(devnull)


def _draw_chunk(task):
    seed, start, stop = task
    return [_WORKER_RECIPE.draw(seed, i) for i in range(start, stop)]


def scene_images(recipe, count, seed, *, workers=1, start=0):
    """Yield (PNG bytes, label, text) for images ``start .. count-1`` of the set, in order."""
    if workers <= 1:
        for index in range(start, count):
            yield recipe.draw(seed, index)
        return
    tasks = [(seed, i, min(i + _CHUNK, count)) for i in range(start, count, _CHUNK)]
    context = multiprocessing.get_context("spawn")  # safe whatever threads the caller runs
    _quiet_resource_tracker()
    pool = context.Pool(workers, initializer=_init_worker, initargs=(recipe,))
    try:
        for chunk in pool.imap(_draw_chunk, tasks):
            yield from chunk
    except (OSError, EOFError) as exc:
        raise CnnctcError(f"a drawing worker failed ({exc}); run again, or with --workers 1") from None
    finally:
        pool.terminate()
        with contextlib.suppress(Exception):
            pool.join()


MIN_FONT_SIZE, MAX_FONT_SIZE = 6, 200  # pixels; --font-size's bounds


def _check_number(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CnnctcError(f"{name} must be a whole number from {low:,} to {high:,}, got {shown(value)}")


def _check_lmdb_out(out, overwrite):
    """With ``overwrite``, an existing LMDB at ``out`` is replaced only when render drew it (its
    ``cnnctc-render`` record): a dataset made otherwise (make-lmdb, the user's own) is refused."""
    if not overwrite or not os.path.isdir(out) or not os.path.isfile(out / "data.mdb"):
        return  # nothing there, or make-lmdb's writer refuses it in its own words
    import lmdb
    try:
        env = lmdb.open(str(out), readonly=True, lock=False, max_readers=1)
        try:
            with env.begin() as txn:
                ours = txn.get(RECIPE_KEY) is not None
        finally:
            env.close()
    except lmdb.Error:
        ours = False
    if not ours:
        raise CnnctcError(f"{out} is an LMDB that `cnnctc render` did not draw; --overwrite replaces only sets it "
                          "drew: choose another OUT, or move that dataset away first")


def write_scene_images(out, count=None, *, seed=0, words=None, fonts=None, backgrounds=None, alphabet=None,
                       effects=1.0, font_size=None, workers=1, overwrite=False, progress=None):
    """Draw a scene set: ``out`` ending in ``.lmdb`` becomes an LMDB (streamed), anything else a
    folder of NNNNN.png with labels.tsv (as ``cnnctc render`` writes). ``words``: the vocabulary
    (each drawn once in order when ``count`` is None, else ``count`` images of words taken at
    random), else the default mix (``count`` images, default 100). ``alphabet``: reduce labels to
    these symbols (see :func:`label_for`); None keeps them as drawn. Returns the labels file or LMDB."""
    from pathlib import Path
    from .. import render
    ordered = words is not None and count is None
    if words is not None:
        words = render._check_request(1, None, words)[1]
        for number, word in enumerate(words, 1):
            problem = word_problem(word)
            if problem:
                raise CnnctcError(f"word {number} {problem}")
    if count is None:
        count = len(words) if words is not None else 100
    _check_number("count", count, 1, render.MAX_COUNT)
    _check_number("seed", seed, 0, 2**63 - 1)
    _check_number("workers", workers, 1, MAX_SCENE_WORKERS)
    if isinstance(effects, bool) or not isinstance(effects, (int, float)) or not 0 <= effects <= 1:
        raise CnnctcError(f"effects must be from 0 (flat, upright, sharp) to 1 (the full scene look), got {effects!r}")
    if font_size is not None:
        try:
            low, high = font_size
        except (TypeError, ValueError):
            raise CnnctcError(f"font_size must be (MIN, MAX) in pixels, got {font_size!r}") from None
        _check_number("the smallest font size", low, MIN_FONT_SIZE, MAX_FONT_SIZE)
        _check_number("the largest font size", high, low, MAX_FONT_SIZE)
    config = SceneConfig(effects=float(effects), **({} if font_size is None else
                                                    {"min_font_size": font_size[0], "max_font_size": font_size[1]}))
    if alphabet is not None:
        from ..alphabet import alphabet_problem
        problem = alphabet_problem(alphabet)
        if problem:
            raise CnnctcError(f"the alphabet {shown(alphabet)} {problem}")
        if words is not None:
            empty = next((w for w in words if not label_for(w, alphabet)), None)
            if empty is not None:
                raise CnnctcError(f"the word {shown(empty)} has no symbol of the alphabet {shown(alphabet)}: its "
                                  "label would be empty; leave it out, or widen --alphabet")
    if not os.fspath(out):
        raise CnnctcError("OUT is empty; name a folder, or an LMDB ending in .lmdb")
    out_path = Path(out)
    lmdb_out = out_path.name.endswith(".lmdb")
    if lmdb_out:
        _check_lmdb_out(out_path, overwrite)
    state = None if lmdb_out else render.check_set_out(out_path, overwrite)
    recipe = SceneRecipe(words=words, fonts=fonts, backgrounds=backgrounds, alphabet=alphabet, config=config)
    recipe.ordered = ordered
    drawn = scene_images(recipe, count, seed, workers=workers)

    def items():
        for png, label, _text in drawn:
            if progress is not None:
                progress(1)
            yield png, label
    import json
    import PIL
    inputs = dict(recipe.describe(), seed=seed, pillow=PIL.__version__)
    if lmdb_out:
        from ..data.writer import write_lmdb
        write_lmdb(out_path, items(), overwrite=overwrite, records={RECIPE_KEY: json.dumps(inputs).encode()})
        return out_path
    return render.write_image_set(out_path, items(), count, inputs, state)
