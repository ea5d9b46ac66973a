"""Training speed and size of CNN-CTC at several widths (``--output-channel``), one run each.

For each width: `cnnctc finetune` from random weights for a few steps on the given LMDB (batch 64,
the bundled models' recipe), the images/s it logs once compiled, the parameter count and the size
of a weights-only float32 checkpoint. This is what the width of cnnctc/synth-scene was chosen
against: the steps a width affords in the training budget. Prints a Markdown table and the machine.

    python benchmarks/bench_width.py LMDB [--widths 64 96 128] [--steps 60]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parameters(width):
    """Values of the network at ``width`` (counted from the shapes MindSpore builds)."""
    code = ("import sys; from cnnctc.network import CNNCTC; import numpy as np\n"
            f"net = CNNCTC(output_channel={width}, final_feature_width=26, num_class=37)\n"
            "print(sum(int(np.prod(p.shape)) for p in net.get_parameters()))")
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=str(ROOT))
    return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout.split()[-1])


def speed(lmdb, width, steps):
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, GLOG_v="3", PYTHONPATH=str(ROOT))
        run = subprocess.run([sys.executable, "-m", "cnnctc", "finetune", "--train", str(lmdb), "--out", out + "/run",
                              "--pretrained", "none", "--alphabet", "0123456789abcdefghijklmnopqrstuvwxyz",
                              "--output-channel", str(width), "--steps", str(steps), "--batch-size", "64",
                              "--log-every", str(steps // 3), "--save-every", str(steps)],
                             env=env, capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"finetune at width {width} failed: {run.stderr.strip().splitlines()[-1]}")
    rates = [float(r) for r in re.findall(r"\(([\d.]+) images/s per worker\)", run.stderr)]
    return rates[-1]  # the first log line includes the graph compile


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lmdb", help="a training LMDB (e.g. one `cnnctc render --style scene` drew)")
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 96, 128])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_demo import machine
    rows = []
    for width in args.widths:
        count = parameters(width)
        rows.append((width, count, count * 4 / 2**20, speed(args.lmdb, width, args.steps)))
        print(f"width {width}: {rows[-1][3]:.1f} images/s", file=sys.stderr, flush=True)
    print(f"machine: {machine()}")
    print()
    print("| width | parameters | weights-only MiB | training images/s (batch 64) |")
    print("| ---: | ---: | ---: | ---: |")
    for width, count, mib, rate in rows:
        print(f"| {width} | {count:,} | {mib:.1f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
