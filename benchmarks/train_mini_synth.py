"""Rebuild the bundled model cnnctc/mini-synth from scratch and measure it.

Every step is a `cnnctc` command (render, make-lmdb, finetune, slim, eval), run in a work folder
with relative paths so that nothing of this machine ends up in the file:

1. render the training words (clean and --noise) and two held-out test sets on other seeds,
   with the nine Debian font files CI installs (fonts-dejavu-core, fonts-liberation,
   fonts-freefont-ttf), named explicitly with --font;
2. make-lmdb each set;
3. finetune from random weights at width 64, alphabet 0-9a-z, seeded;
4. slim the last checkpoint to weights only: that is cnnctc_mini_synth.ckpt;
5. eval it on the held-out sets (plain `cnnctc eval`: the model zoo's protocol, which is the
   default and is called `--protocol zoo` once eval has protocols).

It prints the file's SHA-256 and the accuracies (what the registry, the card and docs/models.md
hold) and whether the file is byte for byte the one shipped in assets/models/. Training is
deterministic on one machine: the same MindSpore, Pillow and font files give the same bytes.
Another CPU or MindSpore build may round differently and give other (equally good) weights.

    python benchmarks/train_mini_synth.py [--work DIR] [--install]
    python benchmarks/train_mini_synth.py --steps 20 --words 640   # a quick check of the pipeline

--steps and --words shrink the recipe (another file, not the shipped one): running that twice and
comparing the SHA-256 printed checks that every step is deterministic without the full training.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnnctc.render import FONT_CANDIDATES  # noqa: E402

SHIPPED = ROOT / "assets" / "models" / "cnnctc_mini_synth.ckpt"
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
# (folder, words, seed, noise): training sets, then the held-out test sets (other seeds).
TRAIN_SETS = [("train-clean", 12000, 11, False), ("train-noise", 12000, 12, True)]
TEST_SETS = [("test-clean", 1000, 31, False), ("test-noise", 1000, 32, True)]
RECIPE = ["--pretrained", "none", "--alphabet", ALPHABET, "--output-channel", "64", "--steps", "600",
          "--batch-size", "64", "--lr", "2e-3", "--seed", "1", "--save-every", "600", "--log-every", "100"]
PACKAGES = {"dejavu": "fonts-dejavu-core", "liberation": "fonts-liberation", "freefont": "fonts-freefont-ttf"}


def cnnctc(work, *args):
    """Run one cnnctc command in ``work``; its output goes to ours. Returns its stdout."""
    print("$ cnnctc " + " ".join(args), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "cnnctc", *args], cwd=work, env=env, stdout=subprocess.PIPE,
                         text=True)
    sys.stdout.write(run.stdout)
    if run.returncode:
        sys.exit(f"cnnctc {args[0]} failed (exit {run.returncode})")
    return run.stdout


def already_rendered(folder, count, seed, noise):
    """Whether ``folder`` holds a set `cnnctc render` made from these very inputs (its marker says so)."""
    import PIL
    try:
        marker = json.loads((folder / ".cnnctc-render").read_text())
    except (OSError, ValueError):
        return False
    return (marker.get("seed"), marker.get("noise"), marker.get("pillow"), len(marker.get("files", [])) - 1,
            [f["file"] for f in marker.get("fonts", [])]) == (seed, noise, PIL.__version__, count,
                                                                list(FONT_CANDIDATES)) and \
        all(f["sha256"] == sha256(f["file"]) for f in marker["fonts"])


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--install", action="store_true", help=f"copy the result over {SHIPPED.relative_to(ROOT)}")
    parser.add_argument("--steps", type=int, help="train this many steps instead (not the shipped recipe)")
    parser.add_argument("--words", type=int, help="render this many words per training set instead")
    args = parser.parse_args()
    recipe, train_sets = list(RECIPE), list(TRAIN_SETS)
    if args.steps:
        recipe[recipe.index("--steps") + 1] = recipe[recipe.index("--save-every") + 1] = str(args.steps)
    if args.words:
        train_sets = [(name, args.words, seed, noise) for name, _, seed, noise in train_sets]
    if args.install and (recipe != RECIPE or train_sets != TRAIN_SETS):
        sys.exit("--install ships the recipe's model only; leave out --steps and --words")

    missing = [font for font in FONT_CANDIDATES if not os.path.isfile(font)]
    if missing:
        needed = sorted({package for key, package in PACKAGES.items() if any(key in font for font in missing)})
        sys.exit(f"missing fonts: {', '.join(missing)}; install {' '.join(needed)} (the model is trained on them)")
    work = Path(args.work or tempfile.mkdtemp(prefix="mini-synth."))
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        for name, count, seed, noise in train_sets + TEST_SETS:
            if already_rendered(work / name, count, seed, noise) and (work / f"{name}.lmdb").exists():
                print(f"(reusing {name}: rendered earlier in {work} from the same inputs)")
                continue
            cnnctc(work, "render", name, "--count", str(count), "--seed", str(seed), *(["--noise"] if noise else []),
                   "--font", *FONT_CANDIDATES, "--alphabet", ALPHABET)
            cnnctc(work, "make-lmdb", name, f"{name}/labels.tsv", f"{name}.lmdb")
        steps = recipe[recipe.index("--steps") + 1]
        cnnctc(work, "finetune", "--train", *(f"{name}.lmdb" for name, *_ in train_sets), "--out", "run", *recipe)
        trained = time.monotonic() - start
        cnnctc(work, "slim", f"run/cnnctc-{int(steps):07d}.ckpt", SHIPPED.name)
        result = json.loads(cnnctc(work, "eval", "--checkpoint", SHIPPED.name, "--data",
                                   *(f"{name}.lmdb" for name, *_ in TEST_SETS), "--json"))
        built = work / SHIPPED.name
        digest = sha256(built)
        accuracy = {("noise" if noise else "clean"): row["accuracy"]
                    for (name, count, seed, noise), row in zip(TEST_SETS, result["datasets"])}
        print()
        print(f"file:      {SHIPPED.name}, {built.stat().st_size / 2**20:.2f} MiB, sha256 {digest}")
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from readme_demo import machine
        print(f"machine:   {machine()}")
        print(f"time:      {trained / 60:.1f} min to train (render, make-lmdb, finetune), "
              f"{(time.monotonic() - start) / 60:.1f} min in all")
        print("| held-out rendered words | words | accuracy % | 1-N.E.D. |")
        print("| --- | ---: | ---: | ---: |")
        for (name, count, seed, noise), row in zip(TEST_SETS, result["datasets"]):
            print(f"| {'slanted and blurred (--noise)' if noise else 'clean'}, seed {seed} | {row['kept']} | "
                  f"{row['accuracy']:.2f} | {row['norm_ed']:.4f} |")
        print(f"registry:  _MINI_SYNTH_SHA256 = {digest!r}")
        print(f"           _MINI_SYNTH_ACCURACY = {json.dumps(accuracy)}")
        if recipe != RECIPE or train_sets != TRAIN_SETS:
            print("shipped:   not compared (a shrunk recipe); run it again and compare the SHA-256")
        elif SHIPPED.is_file():
            same = sha256(SHIPPED) == digest
            print(f"shipped:   {'byte for byte the shipped file' if same else 'DIFFERS from the shipped file'} "
                  f"({SHIPPED.relative_to(ROOT)})")
        if args.install:
            SHIPPED.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(built, SHIPPED)
            print(f"installed: {SHIPPED.relative_to(ROOT)}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
