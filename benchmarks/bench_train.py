"""Training throughput of the full network: images/s per optimizer step at a given batch size.

Uses the fine-tuning train step (CTC loss, centered RMSProp, loss scale) on rendered words, in
GRAPH_MODE on the CPU; the first step compiles and is not timed.

    python benchmarks/bench_train.py [--batch-size 8] [--steps 10]
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
from mindspore import nn  # noqa: E402

from cnnctc.loader import configure_context  # noqa: E402
from cnnctc.network import CNNCTC  # noqa: E402
from cnnctc.render import find_fonts, random_words, render_word  # noqa: E402
from cnnctc.train import CTCLossCell, TrainConfig, TrainStep, lr_schedule  # noqa: E402
from cnnctc.transforms import preprocess  # noqa: E402

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output-channel", type=int, default=512)
    args = parser.parse_args()

    configure_context("CPU")
    recipe = TrainConfig()
    fonts = find_fonts() or [None]
    words = random_words(args.batch_size, ALPHABET, max_length=recipe.max_length)
    images = ms.Tensor(preprocess([render_word(w, font=fonts[i % len(fonts)]) for i, w in enumerate(words)]))
    targets = np.full((args.batch_size, recipe.max_length), len(ALPHABET), np.int32)
    for row, word in enumerate(words):
        targets[row, :len(word)] = [ALPHABET.index(c) for c in word]
    lengths = ms.Tensor(np.array([len(w) for w in words], np.int32))
    targets = ms.Tensor(targets)

    net = CNNCTC(output_channel=args.output_channel)
    optimizer = nn.RMSProp(net.trainable_params(), learning_rate=ms.Tensor(lr_schedule(args.steps + 1, 5e-4, 2)),
                           decay=0.9, momentum=recipe.momentum, epsilon=1e-10, centered=True)
    step = TrainStep(CTCLossCell(net, len(ALPHABET)), optimizer, recipe.loss_scale)
    step.set_train(True)
    compile_start = time.perf_counter()
    step(images, targets, lengths)[0].asnumpy()
    compile_seconds = time.perf_counter() - compile_start
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = step(images, targets, lengths)
    loss.asnumpy()
    seconds = (time.perf_counter() - start) / args.steps

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; MindSpore {ms.__version__}, "
          f"Python {platform.python_version()}")
    print()
    print("| network | batch | seconds per step | images/s | first step (compile) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| output_channel {args.output_channel} | {args.batch_size} | {seconds:.2f} | "
          f"{args.batch_size / seconds:.1f} | {compile_seconds:.1f} s |")


if __name__ == "__main__":
    main()
