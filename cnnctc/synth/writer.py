"""Drawing a scene set: image ``i`` comes from its own seed ``(seed, i)``, so worker processes draw
disjoint chunks and the set is the same bytes whatever their number."""
import contextlib
import io
import multiprocessing
import os

import numpy as np
from PIL import ImageFont

from .._checks import MAX_SCENE_WORKERS
from ..errors import CnnctcError, shown
from .scene import SceneConfig, draw_scene
from .sources import Backgrounds, file_sha256, scene_fonts
from .text import TextSource, label_for

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
                "backgrounds": self.backgrounds.describe(), "config": vars(self.config) if hasattr(self.config, "__dict__")
                else {f: getattr(self.config, f) for f in self.config.__dataclass_fields__}}

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
    _WORKER_RECIPE = recipe


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


def write_scene_images(out, count=None, *, seed=0, words=None, fonts=None, backgrounds=None, alphabet=None,
                       effects=1.0, font_size=None, workers=1, overwrite=False, progress=None):
    """Draw a scene set: ``out`` ending in ``.lmdb`` becomes an LMDB (streamed), anything else a
    folder of NNNNN.png with labels.tsv (as ``cnnctc render`` writes). ``words``: the vocabulary
    (each drawn once in order when ``count`` is None, else ``count`` images of words taken at
    random), else the default mix (``count`` images, default 100). ``alphabet``: reduce labels to
    these symbols (see :func:`label_for`); None keeps them as drawn. Returns the labels file or LMDB."""
    from pathlib import Path
    from .. import render
    if words is not None:
        words = render._check_request(1, None, words)[1]
    if count is None:
        count = len(words) if words is not None else 100
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= render.MAX_COUNT:
        raise CnnctcError(f"count must be a whole number from 1 to {render.MAX_COUNT:,}, got {count!r}")
    if not 0 <= effects <= 1:
        raise CnnctcError(f"effects must be from 0 (flat, upright, sharp) to 1 (the full scene look), got {effects}")
    config = SceneConfig(effects=float(effects), **({} if font_size is None else
                                                    {"min_font_size": font_size[0], "max_font_size": font_size[1]}))
    if alphabet is not None:
        from ..alphabet import alphabet_problem
        problem = alphabet_problem(alphabet)
        if problem:
            raise CnnctcError(f"the alphabet {shown(alphabet)} {problem}")
    out_path = Path(out)
    lmdb_out = out_path.name.endswith(".lmdb")
    state = None if lmdb_out else render.check_set_out(out_path, overwrite)
    recipe = SceneRecipe(words=words, fonts=fonts, backgrounds=backgrounds, alphabet=alphabet, config=config)
    recipe.ordered = words is not None and count == len(words)
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
