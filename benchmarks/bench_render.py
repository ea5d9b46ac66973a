"""How fast `cnnctc render` draws: plain and scene style, one and several workers, in one run.

Each row is one `cnnctc render` process writing an LMDB (whole command, start-up included: what a
user waits for), its images/s and images/s per worker. The scene rows also check that every
worker count drew the same bytes (the set's records are compared). Prints a Markdown table and the
machine.

    python benchmarks/bench_render.py [--count 4000] [--workers 1 2]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def render(out, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnctc", "render", str(out), "-q", *map(str, args)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def records(path):
    import lmdb
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        found = dict(txn.cursor())
    env.close()
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    rows, sets = [], {}
    with tempfile.TemporaryDirectory() as work:
        seconds = render(Path(work) / "plain.lmdb", "--count", args.count)
        rows.append(("plain", 1, args.count / seconds, args.count / seconds))
        for workers in args.workers:
            out = Path(work) / f"scene-{workers}.lmdb"
            seconds = render(out, "--style", "scene", "--count", args.count, "--workers", workers)
            rows.append(("scene", workers, args.count / seconds, args.count / seconds / workers))
            sets[workers] = records(out)
        same = all(found == sets[args.workers[0]] for found in sets.values())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_demo import machine
    print(f"machine: {machine()}; {args.count} images per run, written to an LMDB")
    print()
    print("| style | workers | images/s | images/s per worker |")
    print("| --- | ---: | ---: | ---: |")
    for style, workers, rate, per in rows:
        print(f"| {style} | {workers} | {rate:.0f} | {per:.0f} |")
    print()
    print(f"scene sets identical across worker counts {args.workers}: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
