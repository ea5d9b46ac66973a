"""Building an LMDB from image files: DTRB's create_lmdb_dataset.py against ``cnnctc make-lmdb``.

Two sets, each written by both in one run, each run in its own process after dropping the page
cache (root), wall time and peak resident memory of that process:

- ``--count`` (default 100,000) rendered word images, 1,000 distinct renders copied to
  distinct files, with a labels file of ``path<TAB>word`` lines;
- ``--big`` (default 300) images of about 2 MB (random noise, which PNG cannot compress).

DTRB's writer: pass ``--dtrb PATH/create_lmdb_dataset.py`` to run a copy of it (it needs cv2
and fire); otherwise the script re-enacts what its lines do (createDataset: read the whole
labels file with readlines, then per line read the image, decode it to check it, keep image
and label in a dict, write the dict in one transaction every 1,000 samples, ``num-samples``
last, map_size 1 TB), with Pillow's decoder in place of cv2.imdecode.

    python benchmarks/bench_make_lmdb.py [--count 100000] [--big 300] [--dtrb FILE] [--dir DIR]
"""
import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import lmdb_fixture  # noqa: E402
from cnnctc.render import find_fonts, random_words, render_word  # noqa: E402

# What createDataset (create_lmdb_dataset.py, lines 28-83 at e2117f2) does, step by step.
REENACTED_DTRB = r"""
import io, os, sys
import lmdb
from PIL import Image
input_path, gt_file, output_path = sys.argv[1:4]
os.makedirs(output_path, exist_ok=True)
env = lmdb.open(output_path, map_size=1099511627776)
pending, number = {}, 1
with open(gt_file, "r", encoding="utf-8") as f:
    lines = f.readlines()                                    # the whole labels file at once
for i, line in enumerate(lines):
    image_path, label = line.strip("\n").split("\t")
    image_path = os.path.join(input_path, image_path)
    if not os.path.exists(image_path):
        continue
    with open(image_path, "rb") as f:
        image = f.read()
    try:                                                     # its validity check: decode to grey
        grey = Image.open(io.BytesIO(image)).convert("L")
        if grey.size[0] * grey.size[1] == 0:
            continue
    except Exception:
        continue
    pending[b"image-%09d" % number] = image
    pending[b"label-%09d" % number] = label.encode()
    if number % 1000 == 0:                                   # a transaction per 1000 samples
        with env.begin(write=True) as txn:
            for key, value in pending.items():
                txn.put(key, value)
        pending = {}
    number += 1
pending[b"num-samples"] = str(number - 1).encode()
with env.begin(write=True) as txn:
    for key, value in pending.items():
        txn.put(key, value)
"""


def _high_water_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def run_measured(args, cold, env=None):
    """(seconds, peak RSS MB) of a command in its own process.

    The peak is the process's VmHWM, read every 20 ms while it runs (it only grows): ru_maxrss
    would carry over this script's own resident set into the child across exec."""
    if cold:
        lmdb_fixture.drop_page_cache()
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak, done = [0.0], threading.Event()

    def watch():
        while not done.wait(0.02):
            peak[0] = max(peak[0], _high_water_mb(proc.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr = proc.stderr.read().decode(errors="replace")  # ends when the process does
    proc.wait()
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    proc.stderr.close()
    if proc.returncode:
        raise SystemExit(f"{args[:4]} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return seconds, peak[0]


def word_set(folder, count, distinct=1000):
    os.makedirs(folder)
    rng = random.Random(0)
    fonts = find_fonts() or [None]
    words = random_words(distinct, lmdb_fixture.ALPHABET, max_length=12, rng=rng)
    for i, word in enumerate(words):
        render_word(word, font=fonts[i % len(fonts)], noise=bool(i % 2), rng=rng).save(
            os.path.join(folder, f"r{i}.png"))
    lines = []
    for n in range(count):
        name = f"{n // 1000:03d}/{n:06d}.png"
        if n % 1000 == 0:
            os.makedirs(os.path.join(folder, name.split("/")[0]))
        shutil.copyfile(os.path.join(folder, f"r{n % distinct}.png"), os.path.join(folder, name))
        lines.append(f"{name}\t{words[n % distinct]}\n")
    with open(os.path.join(folder, "labels.tsv"), "w") as f:
        f.writelines(lines)
    return os.path.join(folder, "labels.tsv")


def big_set(folder, count):
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    distinct = 4
    for i in range(distinct):
        Image.fromarray(rng.integers(0, 255, (700, 1000, 3), dtype=np.uint8)).save(os.path.join(folder, f"n{i}.png"))
    lines = []
    for n in range(count):
        shutil.copyfile(os.path.join(folder, f"n{n % distinct}.png"), os.path.join(folder, f"{n}.png"))
        lines.append(f"{n}.png\t{n % 10}\n")
    with open(os.path.join(folder, "labels.tsv"), "w") as f:
        f.writelines(lines)
    return os.path.join(folder, "labels.tsv")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=300)
    parser.add_argument("--dtrb", metavar="FILE", help="a copy of DTRB's create_lmdb_dataset.py to run")
    parser.add_argument("--dir", help="where to write (default: a temporary folder)")
    parser.add_argument("--warm", action="store_true", help="do not drop the page cache")
    args = parser.parse_args()

    root = tempfile.mkdtemp(dir=args.dir)
    env = dict(os.environ, PYTHONPATH=ROOT)
    rows = []
    try:
        for name, make in ((f"{args.count:,} word images", lambda f: word_set(f, args.count)),
                           (f"{args.big} images of 2 MB", lambda f: big_set(f, args.big))):
            if (args.count if "word" in name else args.big) <= 0:
                continue
            folder = os.path.join(root, name.split()[1])
            print(f"making {name} ...", flush=True)
            labels = make(folder)
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
            if args.dtrb:
                dtrb = [sys.executable, args.dtrb, f"--inputPath={folder}", f"--gtFile={labels}",
                        f"--outputPath={root}/dtrb.lmdb"]
                how = f"DTRB's create_lmdb_dataset.py ({args.dtrb})"
            else:
                dtrb = [sys.executable, "-c", REENACTED_DTRB, folder, labels, f"{root}/dtrb.lmdb"]
                how = "DTRB's create_lmdb_dataset.py (re-enacted, Pillow for cv2)"
            seconds, peak = run_measured(dtrb, not args.warm, env)
            rows.append((name, size, how, seconds, peak, os.path.getsize(f"{root}/dtrb.lmdb/data.mdb")))
            shutil.rmtree(f"{root}/dtrb.lmdb")
            ours = [sys.executable, "-m", "cnnctc", "make-lmdb", folder, labels, f"{root}/ours.lmdb"]
            seconds, peak = run_measured(ours, not args.warm, env)
            rows.append((name, size, "`cnnctc make-lmdb`", seconds, peak, os.path.getsize(f"{root}/ours.lmdb/data.mdb")))
            shutil.rmtree(f"{root}/ours.lmdb")
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}; "
          f"{'warm page cache' if args.warm else 'page cache dropped before each run'}")
    print()
    print("| input | writer | wall time | images/s | peak memory | data.mdb |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, size, how, seconds, peak, out in rows:
        count = int(name.split()[0].replace(",", ""))
        print(f"| {name} ({size / 1e6:.0f} MB) | {how} | {seconds:.1f} s | {count / seconds:.0f} | {peak:.0f} MB | "
              f"{out / 1e6:.0f} MB |")


if __name__ == "__main__":
    main()
