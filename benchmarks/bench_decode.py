"""Decoding cost against the network's own: greedy, beam search and lexicon decoding of one batch.

Renders a batch of words, times the full-size network on it, then times each decoder on the
batch's logits (a 10,000-word lexicon of random words plus the batch's truths) and prints a
Markdown table with each decoder's time as a multiple of the network's.

The logits come from two sources:
- the full-size network's own outputs. With random weights (no ``--checkpoint``) they are
  nearly uniform: every word of the lexicon is about as probable as any other, the worst case
  for the lexicon decoder's pruning;
- with ``--checkpoint CKPT`` (the hub weights or a fine-tuned model of this alphabet), real
  outputs on the rendered words. Without one, the logits of a trained network are simulated
  from the truths (each symbol peaked in its column, the blank elsewhere, Gaussian noise);
  ``--noise`` sets how unsure they are (1.5: greedy reads almost every word; 3: it reads none,
  and every lexicon word is nearly as probable as the truth, so many must be scored).

    python benchmarks/bench_decode.py [--batch 32] [--words 10000] [--repeats 3] [--checkpoint CKPT]
"""
import argparse
import os
import platform
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

from cnnctc.decoding import Lexicon, ctc_beam_decode, ctc_greedy_decode, ctc_lexicon_decode  # noqa: E402
from cnnctc.render import find_fonts, random_words, render_word  # noqa: E402

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def best_time(run, repeats):
    """(wall seconds, CPU seconds of this process) of the fastest of ``repeats`` calls, after one
    untimed call, and that call's result. On a machine shared with other work the CPU time
    shows what the call itself costs."""
    result = run()
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return (wall, cpu), result


def simulated_logits(truths, columns, classes, noise, seed=0):
    """Logits a confident network gives: each symbol peaked in its column, the blank elsewhere."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, noise, size=(len(truths), columns, classes))
    logits[:, :, -1] += 8.0
    for b, word in enumerate(truths):
        for column, ch in zip(np.linspace(1, columns - 2, len(word)).round().astype(int), word):
            logits[b, column, ALPHABET.index(ch)] += 14.0
    return logits.astype(np.float32)


def machine():
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--words", type=int, default=10000, help="lexicon size (random words plus the truths)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beam-width", type=int, default=10)
    parser.add_argument("--max-distance", type=int, default=3)
    parser.add_argument("--noise", type=float, nargs="+", default=[1.5, 3.0],
                        help="noise levels of the simulated logits (1.5: confident, 3: unsure)")
    parser.add_argument("--checkpoint", help="a trained checkpoint for real outputs (alphabet: digits and a-z)")
    args = parser.parse_args()

    import mindspore as ms
    from cnnctc.loader import configure_context, load_model
    from cnnctc.network import CNNCTC
    from cnnctc.transforms import preprocess

    configure_context("CPU")
    fonts = find_fonts() or [None]
    truths = random_words(args.batch, ALPHABET, rng=random.Random(1))
    images = [render_word(w, font=fonts[i % len(fonts)], rng=random.Random(i)) for i, w in enumerate(truths)]
    batch = ms.Tensor(preprocess(images))
    net = CNNCTC()                    # random weights: the network's speed does not depend on them
    net.set_train(False)
    network_seconds, outputs = best_time(lambda: net(batch).asnumpy(), args.repeats)
    sources = [("full-size network, random weights (near uniform)", outputs)]
    if args.checkpoint:
        loaded = load_model(args.checkpoint, device_target="CPU")
        if loaded.manifest.alphabet != ALPHABET:
            parser.error(f"the checkpoint reads {loaded.manifest.alphabet!r}, not {ALPHABET!r}")
        sources.append(("trained checkpoint on the rendered words", loaded.network(batch).asnumpy()))
    else:
        columns, classes = sources[0][1].shape[1:]
        for noise in args.noise:
            sources.append((f"simulated trained network, noise {noise}",
                            simulated_logits(truths, columns, classes, noise)))

    others = [w for w in random_words(args.words * 2, ALPHABET, min_length=2, max_length=10, rng=random.Random(2))
              if w not in set(truths)]
    words = list(dict.fromkeys(others))[:args.words - len(set(truths))] + truths
    start = time.perf_counter()
    lexicon = Lexicon(words, ALPHABET)
    prepare_seconds = time.perf_counter() - start

    rows = []
    for name, logits in sources:
        decoders = [
            ("greedy", lambda: ctc_greedy_decode(logits, ALPHABET)),
            (f"beam, width {args.beam_width}", lambda: ctc_beam_decode(logits, ALPHABET, beam_width=args.beam_width)),
            (f"lexicon, {len(lexicon)} words", lambda: ctc_lexicon_decode(logits, ALPHABET, lexicon)),
            (f"lexicon, {len(lexicon)} words, max_distance {args.max_distance}",
             lambda: ctc_lexicon_decode(logits, ALPHABET, lexicon, max_distance=args.max_distance)),
        ]
        for decoder, run in decoders:
            seconds, predictions = best_time(run, args.repeats)
            best = [p[0] if isinstance(p, list) else p for p in predictions]
            rows.append((name, decoder, seconds, np.mean([p.text == t for p, t in zip(best, truths)])))

    print(f"machine: {machine()}; MindSpore {ms.__version__}, numpy {np.__version__}, "
          f"Python {platform.python_version()}")
    wall, cpu = network_seconds
    print(f"network (full size, batch {args.batch}, best of {args.repeats}): {wall * 1000:.0f} ms "
          f"({cpu * 1000:.0f} ms CPU); preparing the lexicon once: {prepare_seconds * 1000:.0f} ms")
    print()
    print("| logits | decoder | ms per batch | CPU ms | x network | word accuracy |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, decoder, (seconds, cpu_seconds), correct in rows:
        print(f"| {name} | {decoder} | {seconds * 1000:.1f} | {cpu_seconds * 1000:.1f} | {seconds / wall:.3f} "
              f"| {correct:.2f} |")


if __name__ == "__main__":
    main()
