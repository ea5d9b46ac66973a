"""Commands that make data: render (synthetic word images) and make-lmdb."""
import argparse
import os
import sys


from ._args import Command, alphabet_arg, int_at_least, progress_bar, seed_arg


def _effects(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 (flat, upright, sharp) to 1 (the full scene look), got {text}")
    return value


def render_arguments(p):
    from .._checks import MAX_RENDER_COUNT as MAX_COUNT, MAX_SCENE_WORKERS
    p.add_argument("out", metavar="OUT", help="folder to write NNNNN.png and labels.tsv into, or an LMDB when it ends "
                   "in .lmdb (written directly, as make-lmdb would)")
    p.add_argument("--style", choices=["plain", "scene"], default="plain",
                   help="plain: dark random strings on light paper, nine fonts (default); scene: words the way "
                   "MJSynth and SynthTIGER draw them (every installed font, colours, photo backgrounds, "
                   "distortion, blur, noise, JPEG)")
    p.add_argument("--count", type=int_at_least(1, MAX_COUNT, "images per set; render several sets instead"),
                   help=f"images to draw (default 100; with --words or --words-file: each word once; at most {MAX_COUNT:,})")
    words = p.add_mutually_exclusive_group()
    words.add_argument("--words", nargs="+", help="draw these words (each once, or --count images of them at random)")
    words.add_argument("--words-file", metavar="FILE", help="your vocabulary, one word per line, drawn as written (each "
                       "once, or --count images of them at random); scene style without it draws dictionary words, "
                       "numbers, dates, prices and codes")
    p.add_argument("--font", nargs="+", metavar="FILE", help="font files (scene style: also folders) to draw with "
                   "(default: plain style the installed DejaVu, Liberation and FreeFont files; scene style every "
                   "installed font that has the glyphs)")
    p.add_argument("--alphabet", type=alphabet_arg(" to draw random words from", visible=True),
                   help="plain style: symbols of random words (default 0-9a-z); scene style: reduce each label to "
                   "these symbols (lower-cased when they have no capitals, others dropped: Coca-Cola -> cocacola; "
                   "default: labels as drawn)")
    p.add_argument("--noise", action="store_true", help="plain style: slant and blur the words")
    p.add_argument("--backgrounds", metavar="DIR", help="scene style: photographs to crop backgrounds from (default: "
                   "scikit-image's sample photos when the synth extra is installed)")
    p.add_argument("--effects", type=_effects, default=1.0, metavar="F",
                   help="scene style: chance of every effect, from 0 (flat, upright, sharp) to 1 (default)")
    p.add_argument("--font-size", nargs=2, type=int_at_least(6, 200), metavar=("MIN", "MAX"),
                   help="scene style: font sizes in pixels before scaling to 32 high (default 26 60)")
    p.add_argument("--workers", type=int_at_least(1, MAX_SCENE_WORKERS), default=1, metavar="N",
                   help="scene style: drawing processes (the same seed draws the same bytes whatever N is)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the words, fonts and effects (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a set this command rendered into OUT before, "
                   "or an LMDB (never a folder holding anything else)")


    p.add_check(_render_combination_problem)


_SCENE_ONLY = {"backgrounds": None, "effects": 1.0, "font_size": None, "workers": 1}


def _render_combination_problem(args):
    """Options that mean nothing in the chosen style (a usage error, exit 2)."""
    if args.font_size and args.font_size[0] > args.font_size[1]:
        return f"--font-size {args.font_size[0]} {args.font_size[1]}: MIN is larger than MAX"
    if args.style == "scene":
        return "--noise is a plain-style option; the scene style has its own effects (--effects)" if args.noise else None
    given = [name for name, default in _SCENE_ONLY.items() if getattr(args, name) != default]
    if given:
        return f"--{given[0].replace('_', '-')} is a scene-style option; add --style scene"
    return None


def render(args):
    words = args.words
    if args.words_file:
        from ..synth.text import read_words_file
        words = read_words_file(args.words_file)
    if args.style == "scene":
        return _render_scene(args, words)
    from ..render import MARKER, resolve_fonts, write_word_images
    fonts = resolve_fonts(args.font)
    if words is not None and args.count is not None:
        import random
        chooser = random.Random(args.seed)
        words = [chooser.choice(words) for _ in range(args.count)]
    count = args.count or 100
    labels = write_word_images(args.out, count, alphabet=args.alphabet or "0123456789abcdefghijklmnopqrstuvwxyz",
                               seed=args.seed, noise=args.noise, words=words, fonts=fonts, overwrite=args.overwrite)
    where = "an LMDB" if str(args.out).endswith(".lmdb") else f"labels in {labels}"
    print(f"{args.out}: {count if not words else len(words)} images, {where}")
    if fonts == [None]:
        print("fonts: Pillow's built-in font only (no --font given and none of fonts-dejavu-core, "
              "fonts-liberation, fonts-freefont-ttf is installed)")
    else:
        print(f"fonts: {', '.join(os.path.basename(f) for f in fonts)} (paths and SHA-256 in "
              f"{os.path.join(args.out, MARKER)})")
    return 0


def _render_scene(args, words):
    from ..synth.writer import write_scene_images
    count = args.count or (len(words) if words else 100)
    from .._streams import is_terminal
    shown = not args.quiet and is_terminal(sys.stderr)
    with progress_bar(count if shown else None, shown) as bar:
        result = write_scene_images(args.out, args.count, seed=args.seed, words=words, fonts=args.font,
                                    backgrounds=args.backgrounds, alphabet=args.alphabet, effects=args.effects,
                                    font_size=args.font_size, workers=args.workers, overwrite=args.overwrite,
                                    progress=bar.update)
    where = "an LMDB" if str(args.out).endswith(".lmdb") else f"labels in {result}"
    print(f"{args.out}: {count} scene images, {where}")
    return 0


def make_lmdb_arguments(p):
    p.add_argument("images_dir", metavar="IMAGES_DIR")
    p.add_argument("labels_file", metavar="LABELS_FILE")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it is an LMDB (never a folder "
                   "holding anything else, nor one that is, holds or contains the inputs)")


def make_lmdb(args):
    from ..data import make_lmdb as write
    from ..data.writer import count_label_lines
    from .._streams import is_terminal
    shown = not args.quiet and is_terminal(sys.stderr)
    with progress_bar(count_label_lines(args.labels_file) if shown else None, shown) as bar:
        stats = write(args.images_dir, args.labels_file, args.out, overwrite=args.overwrite, progress=bar.update)
    print(f"{args.out}: {stats}")
    return 0


COMMANDS = [
    Command("render", "draw synthetic word images with the installed fonts (for demos and tests); writes "
            "OUT/NNNNN.png and OUT/labels.tsv for make-lmdb", render_arguments, render,
            ("cnnctc render demo/train --count 2000 --alphabet 0123456789",
             "cnnctc render demo/hard --count 200 --noise --seed 7"), uses_manifest=False),
    Command("make-lmdb", "build an LMDB dataset in the field's format from images and a labels file (one "
            "'relative/path<TAB>text' per line, optionally <TAB>a per-image lexicon of words separated by spaces); "
            "unreadable images and empty labels are skipped and counted", make_lmdb_arguments, make_lmdb,
            ("cnnctc make-lmdb demo/train demo/train/labels.tsv demo/train.lmdb",), uses_manifest=False),
]
