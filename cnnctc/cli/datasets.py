"""Commands that make data: render (synthetic word images) and make-lmdb."""
import os
import sys

from ._args import Command, alphabet_arg, int_at_least, progress_bar, seed_arg


def render_arguments(p):
    from .._checks import MAX_RENDER_COUNT as MAX_COUNT
    p.add_argument("out", metavar="OUT")
    p.add_argument("--count", type=int_at_least(1, MAX_COUNT, "images per set; render several sets instead"),
                   default=100, help=f"random words to draw (default 100, at most {MAX_COUNT})")
    p.add_argument("--words", nargs="+", help="draw these words instead of random ones")
    p.add_argument("--font", nargs="+", metavar="FILE", help="font files to draw with, in turn (default: the "
                   "installed DejaVu, Liberation and FreeFont files, else Pillow's own font)")
    p.add_argument("--alphabet", type=alphabet_arg(" to draw random words from", visible=True),
                   default="0123456789abcdefghijklmnopqrstuvwxyz", help="symbols of random words")
    p.add_argument("--noise", action="store_true", help="slant and blur the words")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the random words, fonts and colours (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a set this command rendered into OUT before "
                   "(never a folder holding anything else)")


def render(args):
    from ..render import MARKER, resolve_fonts, write_word_images
    fonts = resolve_fonts(args.font)
    labels = write_word_images(args.out, args.count, alphabet=args.alphabet, seed=args.seed, noise=args.noise,
                               words=args.words, fonts=fonts, overwrite=args.overwrite)
    print(f"{args.out}: {args.count if not args.words else len(args.words)} images, labels in {labels}")
    if fonts == [None]:
        print("fonts: Pillow's built-in font only (no --font given and none of fonts-dejavu-core, "
              "fonts-liberation, fonts-freefont-ttf is installed)")
    else:
        print(f"fonts: {', '.join(os.path.basename(f) for f in fonts)} (paths and SHA-256 in "
              f"{os.path.join(args.out, MARKER)})")
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
    shown = not args.quiet and sys.stderr.isatty()
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
