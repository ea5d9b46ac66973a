"""Decoding cost against the network's own, per runtime: greedy, beam search and lexicon decoding of one batch.

Renders a batch of words and, in this one process, times the full-size network on it with
MindSpore, onnxruntime float32 and onnxruntime int8 (the same weights: saved as a checkpoint,
exported with ``cnnctc export``'s code and quantized with ``cnnctc quantize``'s, calibrated on
other rendered words). Then times each decoder on the batch's logits, with lexicons of
``--words`` words (random words plus the batch's truths), and prints a Markdown table with
each decoder's time as a multiple of each runtime's time for the same batch.

The logits come from two sources:
- the full-size network's own outputs. With random weights (no ``--checkpoint``) they are
  nearly uniform: every word of the lexicon is about as probable as any other, the worst case
  for the lexicon decoder's pruning;
- with ``--checkpoint CKPT`` (the hub weights or a fine-tuned model of this alphabet), real
  outputs on the rendered words. Without one, the logits of a trained network are simulated
  from the truths (each symbol peaked in its column, the blank elsewhere, Gaussian noise);
  ``--noise`` sets how unsure they are (1.5: greedy reads almost every word; 3: it reads none,
  and every lexicon word is nearly as probable as the truth, so many must be scored).

Every time is the best of ``--repeats`` runs; the runs of the networks and of the decoders
alternate, so that a drift of a shared machine's speed affects them alike.

    python benchmarks/bench_decode.py [--batch 32] [--words 10000 100000] [--repeats 3] [--checkpoint CKPT]
"""
import argparse
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402  (MindSpore before onnx: SPEC section 9)

from cnnctc.decoding import Lexicon, ctc_beam_decode, ctc_greedy_decode, ctc_lexicon_decode  # noqa: E402
from cnnctc.render import find_fonts, random_words, render_word  # noqa: E402

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


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
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    model = re.search(r"Model name:\s*(.+)", lscpu)
    flags = set(re.search(r"Flags:\s*(.+)", lscpu).group(1).split()) if "Flags:" in lscpu else set()
    vector = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f in flags)
    import onnxruntime
    return (f"{model.group(1).strip() if model else platform.processor()}, {os.cpu_count()} cores, "
            f"{vector or 'no AVX2/AVX-512'}; MindSpore {ms.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"numpy {np.__version__}, Python {platform.python_version()}")


def lexicon_words(count, truths, seed=2):
    """``count`` distinct words: random digit-and-letter strings of 2 to 10 symbols, and the truths."""
    truth_set = set(truths)
    rng = random.Random(seed)
    others = {}
    while len(others) < count - len(truth_set):
        for word in random_words(count, ALPHABET, min_length=2, max_length=10, rng=rng):
            if word not in truth_set:
                others.setdefault(word, None)
    return list(others)[:count - len(truth_set)] + sorted(truth_set)


def timed(run):
    start, start_cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--words", type=int, nargs="+", default=[10000, 100000],
                        help="lexicon sizes (random words plus the truths)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beam-width", type=int, default=10)
    parser.add_argument("--max-distance", type=int, default=3)
    parser.add_argument("--noise", type=float, nargs="+", default=[1.5, 3.0],
                        help="noise levels of the simulated logits (1.5: confident, 3: unsure)")
    parser.add_argument("--calib", type=int, default=64, help="calibration images for int8")
    parser.add_argument("--checkpoint", help="a trained checkpoint for real outputs (alphabet: digits and a-z)")
    parser.add_argument("--workdir", help="keep the checkpoint and exported files here")
    args = parser.parse_args()

    from cnnctc.checkpoint import save_checkpoint
    from cnnctc.export import export_model
    from cnnctc.loader import configure_context, load_model
    from cnnctc.network import CNNCTC
    from cnnctc.onnx_runtime import OnnxRunner
    from cnnctc.quantize import quantize_model
    from cnnctc.transforms import preprocess

    configure_context("CPU")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_decode."))
    work.mkdir(parents=True, exist_ok=True)
    fonts = find_fonts() or [None]
    truths = random_words(args.batch, ALPHABET, rng=random.Random(1))
    images = [render_word(w, font=fonts[i % len(fonts)], rng=random.Random(i)) for i, w in enumerate(truths)]
    batch = preprocess(images)

    net = CNNCTC()                    # random weights: the network's speed does not depend on them
    net.set_train(False)
    checkpoint = work / "random.ckpt"
    save_checkpoint(net, checkpoint)
    onnx_file, int8_file = work / "model.onnx", work / "model.int8.onnx"
    export_model(onnx_file, checkpoint=checkpoint, overwrite=True)
    calib_dir = work / "calib"
    calib_dir.mkdir(exist_ok=True)
    calib_rng = random.Random(3)
    for i, word in enumerate(random_words(args.calib, ALPHABET, rng=calib_rng)):
        render_word(word, font=fonts[i % len(fonts)], rng=calib_rng).save(calib_dir / f"{i:05d}.png")
    quantize_model(onnx_file, [calib_dir], int8_file, max_images=args.calib, overwrite=True)
    ms_batch = ms.Tensor(batch)
    float_runner, int8_runner = OnnxRunner(onnx_file), OnnxRunner(int8_file)
    networks = {"MindSpore": lambda: net(ms_batch).asnumpy(), "onnxruntime float32": lambda: float_runner(batch),
                "onnxruntime int8": lambda: int8_runner(batch)}

    outputs = networks["MindSpore"]()
    sources = [("full-size network, random weights (near uniform)", outputs)]
    if args.checkpoint:
        loaded = load_model(args.checkpoint, device_target="CPU")
        if loaded.manifest.alphabet != ALPHABET:
            parser.error(f"the checkpoint reads {loaded.manifest.alphabet!r}, not {ALPHABET!r}")
        sources.append(("trained checkpoint on the rendered words", loaded.network(ms_batch).asnumpy()))
    else:
        columns, classes = outputs.shape[1:]
        for noise in args.noise:
            sources.append((f"simulated trained network, noise {noise}",
                            simulated_logits(truths, columns, classes, noise)))

    lexicons, prepare = {}, {}
    for count in args.words:
        words = lexicon_words(count, truths)
        wall, _, lexicons[count] = timed(lambda: Lexicon(words, ALPHABET))
        prepare[count] = wall

    decoders = []
    for name, logits in sources:
        decoders.append((name, "greedy", lambda logits=logits: ctc_greedy_decode(logits, ALPHABET)))
        decoders.append((name, f"beam, width {args.beam_width}",
                         lambda logits=logits: ctc_beam_decode(logits, ALPHABET, beam_width=args.beam_width)))
        for count, lexicon in lexicons.items():
            decoders.append((name, f"lexicon, {count:,} words",
                             lambda logits=logits, lexicon=lexicon: ctc_lexicon_decode(logits, ALPHABET, lexicon)))
            decoders.append((name, f"lexicon, {count:,} words, max distance {args.max_distance}",
                             lambda logits=logits, lexicon=lexicon: ctc_lexicon_decode(
                                 logits, ALPHABET, lexicon, max_distance=args.max_distance)))

    for run in list(networks.values()) + [run for _, _, run in decoders]:
        run()                                     # warm up: graph compile, first allocations
    best = {}
    results = {}
    for _ in range(args.repeats):
        for key, run in list(networks.items()) + [((name, decoder), run) for name, decoder, run in decoders]:
            wall, cpu, result = timed(run)
            old = best.get(key, (np.inf, np.inf))
            best[key] = (min(old[0], wall), min(old[1], cpu))
            results[key] = result

    print(f"machine: {machine()}")
    print("network, full size, batch " + str(args.batch) + ", best of " + str(args.repeats) + ": "
          + "; ".join(f"{name} {best[name][0] * 1000:.0f} ms ({best[name][1] * 1000:.0f} ms CPU)" for name in networks))
    print("preparing the lexicon once: " + "; ".join(f"{count:,} words {seconds * 1000:.0f} ms"
                                                    for count, seconds in prepare.items()))
    print()
    print("| logits | decoder | ms per batch | CPU ms | x MindSpore | x onnxruntime float32 | x onnxruntime int8 "
          "| word accuracy |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, decoder, _ in decoders:
        wall, cpu = best[name, decoder]
        predictions = [p[0] if isinstance(p, list) else p for p in results[name, decoder]]
        accuracy = np.mean([p.text == t for p, t in zip(predictions, truths)])
        ratios = " | ".join(f"{wall / best[network][0]:.3f}" for network in networks)
        print(f"| {name} | {decoder} | {wall * 1000:.1f} | {cpu * 1000:.1f} | {ratios} | {accuracy:.2f} |")


if __name__ == "__main__":
    main()
