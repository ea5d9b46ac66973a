"""Opening a large LMDB for training or evaluation: DTRB's label scan against ``cnnctc.data.LmdbDataset``.

Builds an LMDB in the field's layout (a few hundred rendered PNGs repeated under its keys, as
DTRB's create_lmdb_dataset.py writes them; default 2,000,000 samples, about 6.3 GB), then opens
it in fresh processes, each after dropping the page cache (needs root; otherwise the numbers are
warm-cache ones and the script says so):

- DTRB's way (dataset.py, LmdbDataset.__init__): read ``num-samples``, then ``txn.get`` every
  ``label-%09d``, keep the index of each label that passes its filter;
- cnnctc: ``LmdbDataset(path, LabelFilter.for_alphabet(hub alphabet))``;
- with ``--before REV``, also the LmdbDataset of that git revision of this repository.

Wall time, and peak resident memory of the process and its children (the pages it touched
included), above what the process held before opening.

    python benchmarks/bench_lmdb_open.py [--samples 2000000] [--gb 6.3] [--dir DIR] [--keep]
                                         [--before 2cc5cb3]
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import lmdb_fixture  # noqa: E402

# Each opener runs in a fresh interpreter; it prints JSON: seconds, kept, rss before, peaks.
# Peaks are VmHWM (ru_maxrss would carry over the resident set of the process that started it,
# across exec). A reader process of cnnctc is read the same way before the dataset is closed;
# other children (the old code's checker) through RUSAGE_CHILDREN, which carries over the
# opener's resident set at the moment it started them.
_MEASURE = r"""
import json, resource, sys, time
def status_mb(field, pid="self"):
    with open(f"/proc/{{pid}}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024
{setup}
before = status_mb("VmRSS")
started = time.perf_counter()
{open}
seconds = time.perf_counter() - started
reader = getattr(globals().get("dataset"), "_reader", None)
child = status_mb("VmHWM", reader._proc.pid) if getattr(reader, "_proc", None) else 0
globals().get("dataset") and dataset.close()
child = child or resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
try:
    import cnnctc
    package = cnnctc.__file__
except ImportError:
    package = None
print(json.dumps({{"seconds": seconds, "kept": kept, "before_mb": before, "peak_mb": status_mb("VmHWM"),
                   "children_peak_mb": child, "package": package}}))
"""

DTRB_SETUP = "import lmdb, re\nalphabet = '0123456789abcdefghijklmnopqrstuvwxyz'\nbatch_max_length = 25"
# The lines of DTRB's LmdbDataset.__init__ (dataset.py, clovaai/deep-text-recognition-benchmark),
# re-enacted: open, num-samples, then every label through its filter.
DTRB_OPEN = """
env = lmdb.open(sys.argv[1], max_readers=32, readonly=True, lock=False, readahead=False, meminit=False)
with env.begin(write=False) as txn:
    n = int(txn.get('num-samples'.encode()))
    filtered_index_list = []
    for index in range(n):
        index += 1
        label = txn.get('label-%09d'.encode() % index).decode('utf-8')
        if len(label) > batch_max_length:
            continue
        out_of_char = f'[^{alphabet}]'
        if re.search(out_of_char, label.lower()):
            continue
        filtered_index_list.append(index)
kept = len(filtered_index_list)
"""
CNNCTC_SETUP = ("from cnnctc.data import LabelFilter, LmdbDataset\n"
                "label_filter = LabelFilter.for_alphabet('0123456789abcdefghijklmnopqrstuvwxyz', 25)")
CNNCTC_OPEN = "dataset = LmdbDataset(sys.argv[1], label_filter)\nkept = len(dataset)"


def measure(setup, opener, path, pythonpath, cold):
    dropped = lmdb_fixture.drop_page_cache() if cold else False
    code = _MEASURE.format(setup=setup, open=opener)
    env = dict(os.environ, PYTHONPATH=pythonpath)
    # cwd: a neutral folder, so that `import cnnctc` finds the tree on PYTHONPATH, not one in the cwd
    run = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env,
                         cwd=tempfile.gettempdir())
    if run.returncode:
        raise SystemExit(f"the opener failed:\n{run.stderr}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if pythonpath and not (result["package"] or "").startswith(pythonpath):
        raise SystemExit(f"measured {result['package']}, not the package under {pythonpath}")
    result["cold"] = dropped
    return result


def checkout(revision, into):
    """This repository's package at ``revision``, unpacked into ``into`` (for --before)."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", revision, "cnnctc"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return into


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--gb", type=float, default=6.3, help="size of data.mdb to aim at (default 6.3)")
    parser.add_argument("--dir", help="where to build the LMDB (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the LMDB (and reuse one already there)")
    parser.add_argument("--before", metavar="REV", help="also measure LmdbDataset of this git revision")
    parser.add_argument("--warm", action="store_true", help="do not drop the page cache")
    args = parser.parse_args()

    folder = args.dir or tempfile.mkdtemp()
    path = os.path.join(folder, f"bench-{args.samples}.lmdb")
    old_tree = tempfile.mkdtemp() if args.before else None
    try:
        if not os.path.exists(os.path.join(path, "data.mdb")):
            free = shutil.disk_usage(folder).free
            if free < args.gb * 1e9 * 1.2:
                raise SystemExit(f"{folder}: {free / 1e9:.1f} GB free, the LMDB needs {args.gb:.1f} GB")
            started = time.monotonic()
            print(f"building {path}: {args.samples:,} samples ...", flush=True)
            os.makedirs(path)
            lmdb_fixture.build(path, args.samples, target_bytes=args.gb * 1e9)
            print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
        size = os.path.getsize(os.path.join(path, "data.mdb"))
        rows = [("DTRB's way (read `num-samples`, then every `label-%09d`)",
                 measure(DTRB_SETUP, DTRB_OPEN, path, "", not args.warm)),
                ("`cnnctc` (`LmdbDataset`: page-bound check, label scan in a reader process)",
                 measure(CNNCTC_SETUP, CNNCTC_OPEN, path, ROOT, not args.warm))]
        if args.before:
            checkout(args.before, old_tree)
            rows.append((f"`cnnctc` at {args.before} (size check, child touching every record, label scan)",
                         measure(CNNCTC_SETUP.replace(", 25)", ")"), CNNCTC_OPEN, path, old_tree, not args.warm)))
    finally:
        if old_tree:
            shutil.rmtree(old_tree, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)
            if not args.dir:
                shutil.rmtree(folder, ignore_errors=True)

    cold = all(r["cold"] for _, r in rows)
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}")
    print(f"LMDB: {args.samples:,} samples, data.mdb {size / 1e9:.2f} GB; "
          f"{'page cache dropped before each run' if cold else 'WARM page cache (not root?)'}")
    print()
    print("| opening the LMDB | wall time | peak memory: process (+ its children) | above the process before |"
          " samples kept |")
    print("| --- | ---: | ---: | ---: | ---: |")
    dtrb = rows[0][1]["seconds"]
    for name, r in rows:
        total = r["peak_mb"] + r["children_peak_mb"]
        children = f" (+ {r['children_peak_mb']:.0f} MB)" if r["children_peak_mb"] else ""
        print(f"| {name} | {r['seconds']:.2f} s ({r['seconds'] / dtrb:.2f}×) | {r['peak_mb']:.0f} MB{children} | "
              f"{total - r['before_mb']:.0f} MB | {r['kept']:,} |")


if __name__ == "__main__":
    main()
