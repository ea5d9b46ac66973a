"""Build the bundled model cnnctc/synth-scene from synthetic data alone, and measure it.

Every step is resumable (run the same command again after a stop; finished steps are skipped):

1. draw the sets with `cnnctc render --style scene` (labels reduced to 0-9a-z):
   - train: the full scene look (colours, photo backgrounds, distortion, blur, noise, JPEG);
   - test-scene: held out (another seed), same fonts;
   - test-unseen-fonts: held out, drawn only with font families kept out of training
     (HELD_OUT_FAMILIES) and at font sizes below the training range;
2. finetune from cnnctc/mini-synth (itself trained only on plain renders: the curriculum's first
   stage; from random weights on scene images the CTC loss does not move, SPEC section 12, and a
   width-96 start from random weights on flat scene renders stayed at 25-26 for 200 steps here);
3. evaluate the saved checkpoints (finetune keeps the newest two) on the held-out sets and, when
   --realwords DIR is given, on those real crops (validation only: they choose the checkpoint,
   never train);
4. slim the chosen checkpoint to weights only: cnnctc_synth_scene.ckpt.

    python benchmarks/train_synth_scene.py --work DIR [--realwords DIR] [--workers N] [--install]

The fonts are every usable installed font (Debian packages in assets/fonts-debian.txt) minus the
held-out families; the work folder's recipe.json records them with their SHA-256.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHIPPED = ROOT / "assets" / "models" / "cnnctc_synth_scene.ckpt"
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
WIDTH = 64  # cnnctc/mini-synth's, which training starts from
# Debian packages whose fonts the model was trained on (and the held-out ones come from): assets/fonts-debian.txt.
FONT_PACKAGES = " ".join(line for line in (ROOT / "assets" / "fonts-debian.txt").read_text().split()
                         if line.startswith("fonts-") or line == "wamerican")
# Never trained on: the unseen-font test set is drawn with these alone.
HELD_OUT_FAMILIES = ("Cantarell", "Oxygen-Sans", "URW Bookman", "Caladea", "Noto Serif Display", "Cousine")
# (name, count, seed, extra render options)
SETS = [
    ("train", 240000, 102, []),
    ("test-scene", 2000, 201, []),
    ("test-unseen-fonts", 1000, 202, ["--font-size", "14", "24"]),
]
STEPS = 4500
SAVE_EVERY = 500
RECIPE = ["--pretrained", "cnnctc/mini-synth", "--steps", str(STEPS), "--batch-size", "64", "--lr", "1e-3",
          "--seed", "2", "--save-every", str(SAVE_EVERY), "--log-every", "100"]


def cnnctc(work, *args, capture=True):
    print("$ cnnctc " + " ".join(args), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "cnnctc", *args], cwd=work, env=env,
                         stdout=subprocess.PIPE if capture else None, text=True)
    if capture:
        sys.stdout.write(run.stdout)
    if run.returncode:
        sys.exit(f"cnnctc {args[0]} failed (exit {run.returncode})")
    return run.stdout if capture else ""


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fonts_split():
    """(training fonts, held-out fonts): every usable installed font, split by family."""
    from PIL import ImageFont
    from cnnctc.synth import scene_fonts
    train, held = [], []
    for path in scene_fonts():
        family = ImageFont.truetype(path, 16).getname()[0]
        (held if family in HELD_OUT_FAMILIES else train).append(path)
    return train, held


def realwords_lmdb(work, folder):
    """The real crops as an LMDB in the work folder (their labels as written; eval's dtrb-unfiltered
    protocol lower-cases them and drops what is not 0-9a-z, the folder's own scoring rule)."""
    out = work / "realwords-val.lmdb"
    if not out.exists():
        shutil.copytree(folder, work / "realwords-val")
        cnnctc(work, "make-lmdb", "realwords-val", "realwords-val/labels.tsv", out.name)
    return out


def evaluate(work, checkpoint, datasets):
    result = json.loads(cnnctc(work, "eval", "--checkpoint", str(checkpoint), "--protocol", "dtrb-unfiltered",
                               "--data", *datasets, "--json", "-q"))
    return {Path(d).name: (row["correct"], row["kept"], row["accuracy"]) for d, row in zip(datasets, result["datasets"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="work folder (kept: the run resumes from it)")
    parser.add_argument("--realwords", help="folder of real validation crops with labels.tsv (choosing the checkpoint)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="drawing processes")
    parser.add_argument("--until", choices=["data", "train", "all"], default="all")
    parser.add_argument("--install", action="store_true", help=f"copy the result over {SHIPPED.relative_to(ROOT)}")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_fonts, held_fonts = fonts_split()
    if not held_fonts or not train_fonts:
        sys.exit(f"need the fonts of {FONT_PACKAGES} installed (held-out families {HELD_OUT_FAMILIES})")
    recipe = {"fonts_train": [{"file": f, "sha256": sha256(f)} for f in train_fonts],
              "fonts_held_out": [{"file": f, "sha256": sha256(f)} for f in held_fonts],
              "sets": SETS, "recipe": RECIPE, "width": WIDTH}
    (work / "recipe.json").write_text(json.dumps(recipe, indent=1))
    start = time.monotonic()
    for name, count, seed, extra in SETS:
        if (work / f"{name}.lmdb").exists():
            continue
        fonts = held_fonts if name == "test-unseen-fonts" else train_fonts
        cnnctc(work, "render", f"{name}.lmdb", "--style", "scene", "--count", str(count), "--seed", str(seed),
               "--alphabet", ALPHABET, "--workers", str(args.workers), "--font", *fonts, *extra, "-q")
    print(f"data: {(time.monotonic() - start) / 60:.1f} min", flush=True)
    if args.until == "data":
        return
    last = work / "run" / f"cnnctc-{STEPS:07d}.ckpt"
    if not last.exists():
        resume = ["--resume", "run"] if (work / "run").exists() else []
        cnnctc(work, "finetune", "--train", "train.lmdb", "--out", "run", *RECIPE, *resume, capture=False)
    print(f"trained: {(time.monotonic() - start) / 60:.1f} min", flush=True)
    if args.until == "train":
        return
    datasets = ["test-scene.lmdb", "test-unseen-fonts.lmdb"]
    if args.realwords:
        datasets.append(str(realwords_lmdb(work, Path(args.realwords))))
    scores = {}
    # finetune keeps the newest step checkpoints (two): the choice is among those.
    for checkpoint in sorted((work / "run").glob("cnnctc-*.ckpt")):
        step = int(checkpoint.stem.split("-")[1])
        scores[step] = evaluate(work, checkpoint, datasets)
        print(step, scores[step], flush=True)
    # The checkpoint: the most real crops read when they were given, else the held-out scene set.
    key = "realwords-val.lmdb" if args.realwords else "test-scene.lmdb"
    best = max(scores, key=lambda s: (scores[s][key][0], s))
    (work / "scores.json").write_text(json.dumps(scores, indent=1))
    cnnctc(work, "slim", f"run/cnnctc-{best:07d}.ckpt", SHIPPED.name, "--overwrite")
    digest = sha256(work / SHIPPED.name)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_demo import machine
    print(f"\nchosen:    step {best} (by {key})")
    print(f"file:      {SHIPPED.name}, {(work / SHIPPED.name).stat().st_size / 2**20:.2f} MiB, sha256 {digest}")
    print(f"machine:   {machine()}")
    print("| set | correct | kept | accuracy % |")
    print("| --- | ---: | ---: | ---: |")
    for name, (correct, kept, accuracy) in scores[best].items():
        print(f"| {name} | {correct} | {kept} | {accuracy:.2f} |")
    if args.install:
        shutil.copyfile(work / SHIPPED.name, SHIPPED)
        print(f"installed: {SHIPPED.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
