"""Recognition throughput: the Recognizer end to end against the raw network on the same batches.

Renders word images, builds the full-size network (random weights: speed does not depend on
them, and the hub asset is not needed), and prints a Markdown table:
images/s end to end (PIL image in, text out) at batch 1 and 32, the raw network's images/s on
the same preprocessed batch, their ratio, and GFLOP/s achieved (9.5 GFLOP per image).

    python benchmarks/bench_predict.py [--images 128] [--repeats 3]
"""
import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402

from cnnctc.loader import configure_context  # noqa: E402
from cnnctc.network import CNNCTC  # noqa: E402
from cnnctc.recognizer import Recognizer  # noqa: E402
from cnnctc.render import find_fonts, random_words, render_word  # noqa: E402
from cnnctc.transforms import preprocess  # noqa: E402

GFLOP_PER_IMAGE = 9.5


def best_rates(runs, count, repeats):
    """Images per second of the fastest of ``repeats`` runs of each callable, timed in turn so
    that drift of the machine's speed affects them alike (the first calls compile, untimed)."""
    for run in runs:
        run()
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return [count / seconds for seconds in best]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="images per timed run at batch 32")
    parser.add_argument("--single", type=int, default=16, help="images per timed run at batch 1")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    configure_context("CPU")
    fonts = find_fonts() or [None]
    words = random_words(args.images, "0123456789abcdefghijklmnopqrstuvwxyz")
    images = [render_word(w, font=fonts[i % len(fonts)]) for i, w in enumerate(words)]
    net = CNNCTC()
    net.set_train(False)
    rows = []
    for batch_size, count in ((1, args.single), (32, args.images)):
        reader = Recognizer(network=net, batch_size=batch_size)
        subset = images[:count]
        batches = [preprocess(subset[i:i + batch_size]) for i in range(0, count, batch_size)]
        # Raw: the network alone on the same preprocessed batches, numpy in and out.
        end_to_end, raw = best_rates([lambda: reader.recognize(subset),
                                      lambda: [net(ms.Tensor(b)).asnumpy() for b in batches]], count, args.repeats)
        rows.append((batch_size, end_to_end, raw))

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}; "
          f"MindSpore {ms.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    print()
    print("| batch | end to end (images/s) | raw network (images/s) | ratio | GFLOP/s (raw) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for batch_size, end_to_end, raw in rows:
        print(f"| {batch_size} | {end_to_end:.1f} | {raw:.1f} | {end_to_end / raw:.2f} | "
              f"{raw * GFLOP_PER_IMAGE:.0f} |")


if __name__ == "__main__":
    main()
