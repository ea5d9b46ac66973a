"""Runtimes compared: MindSpore, onnxruntime float32 and onnxruntime int8, same weights, same images.

Builds the full-size network with seeded random weights (or takes ``--checkpoint``), saves it
as a checkpoint, exports it to ONNX with ``cnnctc export``'s code and quantizes that with
``cnnctc quantize``'s (calibrated on rendered words other than the timed ones). Then, in this one
process, times end to end recognition (PIL image in, text out) at batch 1 and 32 for each runtime
on the same rendered words, compares the int8 model's per-column argmaxes and texts with the
float model's, and times the first word of ``cnnctc predict --checkpoint X one.png`` in fresh
processes. ``--eval LMDB`` adds word accuracy of the float and int8 files (``cnnctc eval``).

The default runtime (``--runtime auto``) is measured on a hub-layout cache: the checkpoint laid
out where the hub client keeps an asset, named by a manifest (``CNNCTC_MANIFEST``, offline), so
``cnnctc predict one.png`` without ``--checkpoint`` reads it as it reads the hub model. The first
such run exports it to ONNX into the cache (timed once); from the second run on, the first word
in a fresh process is timed against ``predict --checkpoint model.onnx`` and ``--runtime
mindspore`` in the same loop, and end to end throughput at batch 32 of the three in this process.
``--auto-only`` measures only that part. Prints Markdown tables and the machine.

    python benchmarks/bench_runtimes.py [--images 128] [--repeats 3] [--checkpoint CKPT] [--eval LMDB] [--auto-only]
"""
import json
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402  (MindSpore before onnx: SPEC section 9)

from cnnctc.checkpoint import save_checkpoint  # noqa: E402
from cnnctc.decoding import ctc_greedy_decode  # noqa: E402
from cnnctc.export import export_model  # noqa: E402
from cnnctc.loader import configure_context  # noqa: E402
from cnnctc.network import CNNCTC  # noqa: E402
from cnnctc.quantize import quantize_model  # noqa: E402
from cnnctc.recognizer import Recognizer  # noqa: E402
from cnnctc.render import find_fonts, random_words, render_word  # noqa: E402


def seeded_network(seed):
    """The full-size network with He-normal convolutions and identity batch norms, seeded.

    (MindSpore's default initializer leaves every column's argmax the same class, which would
    make the int8 agreement meaningless.)
    """
    net = CNNCTC()
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        shape = tuple(p.shape)
        if p.name.endswith("weight") and len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) * np.sqrt((2.0 if len(shape) == 4 else 1.0) / fan_in)
        elif "gamma" in p.name or "moving_variance" in p.name:
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))
    return net


def best_rates(runs, count, repeats):
    """Images per second of the fastest of ``repeats`` runs of each callable, timed in turn so
    that drift of the machine's speed affects them alike (the first calls warm up, untimed)."""
    for run in runs:
        run()
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return [count / seconds for seconds in best]


def _predict(args, env=None):
    """Wall time and stdout of ``cnnctc predict --quiet ARGS`` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)  # set by MindSpore in this process
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "cnnctc", "predict", "--quiet", *map(str, args)], env=env,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"predict {' '.join(map(str, args))} failed: {run.stderr.strip()}")
    return seconds, run.stdout


def first_word_seconds(model, image, repeats):
    """Best wall time of ``cnnctc predict --checkpoint model image`` in a fresh process."""
    return min(_predict(["--checkpoint", model, image])[0] for _ in range(repeats))


def hub_layout(work, checkpoint):
    """A fresh cache holding ``checkpoint`` where the hub client keeps an asset, and the manifest naming it."""
    from cnnctc.download import sha256_file
    from cnnctc.registry import get_model
    cache = work / "cache"
    data = get_model().manifest.to_dict()
    data.update(uid="bench/hub/cnnctc_seeded", file_name=checkpoint.name, sha256=sha256_file(checkpoint),
                url="https://example.invalid/" + checkpoint.name)
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps(data))
    import shutil
    folder = cache / "bench" / "hub"
    shutil.rmtree(folder, ignore_errors=True)   # a fresh cache: the first run verifies and exports
    folder.mkdir(parents=True)
    os.link(checkpoint, folder / checkpoint.name)
    return cache, manifest


def auto_runtime(work, checkpoint, onnx_file, images, one_png, repeats):
    """The default runtime on a hub-layout cache against the exported file and MindSpore (module docstring)."""
    cache, manifest = hub_layout(work, checkpoint)
    env = {"CNNCTC_CACHE_DIR": str(cache), "CNNCTC_MANIFEST": str(manifest), "CNNCTC_OFFLINE": "1"}
    first_run, auto_text = _predict([one_png], env)   # verifies (and stamps) the asset, exports once
    exported = sorted((cache / "bench" / "hub").glob("*.onnx"))
    assert len(exported) == 1, exported
    cases = {"auto (default), hub-layout cache, second run on": [one_png],
             "--checkpoint model.onnx": ["--checkpoint", onnx_file, one_png],
             "--runtime mindspore, hub-layout cache": ["--runtime", "mindspore", one_png]}
    best = {name: float("inf") for name in cases}
    outputs = {}
    for _ in range(repeats):   # interleaved, so that the machine's drift affects them alike
        for name, case in cases.items():
            seconds, outputs[name] = _predict(case, env)
            best[name] = min(best[name], seconds)
    texts = {name: [line.rsplit(" (", 1)[0] for line in out.splitlines()] for name, out in outputs.items()}

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        readers = {"auto (default), hub-layout cache, second run on": Recognizer(),
                   "--checkpoint model.onnx": Recognizer(onnx_file),
                   "--runtime mindspore, hub-layout cache": Recognizer(runtime="mindspore", device_target="CPU")}
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    runs = [lambda r=r: r.recognize(images) for r in readers.values()]
    rates = dict(zip(readers, best_rates(runs, len(images), repeats)))
    read = {name: [p.text for p in r.recognize(images)] for name, r in readers.items()}
    return first_run, best, rates, len(set(map(tuple, texts.values()))) == 1 and len(set(map(tuple, read.values()))) == 1


def machine():
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    model = re.search(r"Model name:\s*(.+)", lscpu)
    flags = set(re.search(r"Flags:\s*(.+)", lscpu).group(1).split()) if "Flags:" in lscpu else set()
    vector = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16") if f in flags)
    import onnxruntime
    return (f"{model.group(1).strip() if model else platform.processor()}, {os.cpu_count()} cores, "
            f"{vector or 'no AVX2/AVX-512'}; MindSpore {ms.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"numpy {np.__version__}, Python {platform.python_version()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="images per timed run at batch 32")
    parser.add_argument("--single", type=int, default=16, help="images per timed run at batch 1")
    parser.add_argument("--calib", type=int, default=128, help="calibration images for int8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", help="weights to use (default: seeded random, full size)")
    parser.add_argument("--eval", nargs="+", metavar="LMDB", help="also report word accuracy of float and int8")
    parser.add_argument("--workdir", help="keep the checkpoint and exported files here")
    parser.add_argument("--auto-only", action="store_true", help="measure only the default runtime (--runtime auto)")
    args = parser.parse_args()

    configure_context("CPU")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_runtimes."))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "seeded.ckpt"
    if not args.checkpoint:
        save_checkpoint(seeded_network(1), checkpoint)
    onnx_file, int8_file = work / "model.onnx", work / "model.int8.onnx"
    start = time.perf_counter()
    export_model(onnx_file, checkpoint=checkpoint, overwrite=True)
    export_seconds = time.perf_counter() - start

    fonts = find_fonts() or [None]
    reader = Recognizer(checkpoint, device_target="CPU", runtime="mindspore")
    alphabet = reader.alphabet
    rng = random.Random(0)
    if args.auto_only:
        words = random_words(args.images, alphabet, rng=rng)
        images = [render_word(w, font=fonts[i % len(fonts)], rng=rng) for i, w in enumerate(words)]
        images[0].save(work / "one.png")
        print(f"machine: {machine()}")
        print(f"weights: {'seeded random, full size' if not args.checkpoint else checkpoint.name}; "
              f"export {export_seconds:.1f} s")
        print_auto(*auto_runtime(work, checkpoint, onnx_file, images, work / "one.png", args.repeats), len(images))
        return
    calib_dir = work / "calib"
    calib_dir.mkdir(exist_ok=True)
    for i, word in enumerate(random_words(args.calib, alphabet, rng=rng)):
        render_word(word, font=fonts[i % len(fonts)], rng=rng).save(calib_dir / f"{i:05d}.png")
    start = time.perf_counter()
    report = quantize_model(onnx_file, [calib_dir], int8_file, max_images=args.calib, overwrite=True)
    quantize_seconds = time.perf_counter() - start

    words = random_words(args.images, alphabet, rng=rng)
    images = [render_word(w, font=fonts[i % len(fonts)], rng=rng) for i, w in enumerate(words)]
    one_png = work / "one.png"
    images[0].save(one_png)

    runtimes = [("MindSpore (graph mode)", checkpoint), ("onnxruntime float32", onnx_file),
                ("onnxruntime int8", int8_file)]
    rates = {}
    for batch_size, count in ((1, args.single), (32, args.images)):
        readers = [Recognizer(model, device_target="CPU", batch_size=batch_size, runtime="auto" if i else "mindspore")
                   for i, (_, model) in enumerate(runtimes)]
        subset = images[:count]
        found = best_rates([lambda r=r: r.recognize(subset) for r in readers], count, args.repeats)
        for (name, _), rate in zip(runtimes, found):
            rates[name, batch_size] = rate

    readers = [Recognizer(model, device_target="CPU", runtime="auto" if i else "mindspore")
               for i, (_, model) in enumerate(runtimes)]
    from cnnctc.transforms import preprocess
    batch = preprocess(images, readers[0].manifest)
    ms_logits, float_logits, int8_logits = (r.logits(batch) for r in readers)
    agreement = (int8_logits.argmax(-1) == float_logits.argmax(-1)).mean()
    float_vs_ms = (float_logits.argmax(-1) == ms_logits.argmax(-1)).mean()
    texts = [[p.text for p in ctc_greedy_decode(x, alphabet)] for x in (float_logits, int8_logits)]
    same_text = np.mean([a == b for a, b in zip(*texts)])

    startup = {name: first_word_seconds(model, one_png, args.repeats) for name, model in
               (("ckpt", checkpoint), ("onnx", onnx_file), ("int8.onnx", int8_file))}
    auto = auto_runtime(work, checkpoint, onnx_file, images[:args.images], one_png, args.repeats)

    print(f"machine: {machine()}")
    print(f"weights: {'seeded random, full size' if not args.checkpoint else checkpoint.name}; "
          f"export {export_seconds:.1f} s, quantize {quantize_seconds:.1f} s ({report.images} calibration images)")
    print()
    print("| runtime | batch 1 (images/s) | batch 32 (images/s) | batch 32 vs MindSpore |")
    print("| --- | ---: | ---: | ---: |")
    base = rates[runtimes[0][0], 32]
    for name, _ in runtimes:
        print(f"| {name} | {rates[name, 1]:.1f} | {rates[name, 32]:.1f} | {rates[name, 32] / base:.2f}x |")
    print()
    print(f"int8 vs float32 on the {len(images)} timed images: per-column argmax agreement {100 * agreement:.2f}% "
          f"({int8_logits.shape[0] * int8_logits.shape[1]} columns), same text {100 * same_text:.1f}%; "
          f"float32 onnxruntime vs MindSpore: {100 * float_vs_ms:.2f}%")
    print(f"int8 on its calibration images (quantize's report): {100 * report.agreement:.2f}%")
    print()
    print("| first word, fresh process (`cnnctc predict --checkpoint X one.png`) | seconds |")
    print("| --- | ---: |")
    for name, seconds in startup.items():
        print(f"| .{name} | {seconds:.2f} |")
    print_auto(*auto, len(images))
    if args.eval:
        from cnnctc.evaluation import evaluate
        print()
        print("| model | word accuracy % | 1-N.E.D. |")
        print("| --- | ---: | ---: |")
        for name, model in runtimes:
            _, total = evaluate(Recognizer(model, device_target="CPU", runtime="auto" if model != checkpoint
                                           else "mindspore"), args.eval)
            print(f"| {name} | {total.accuracy:.2f} | {total.norm_ed:.4f} |")


def print_auto(first_run, first_word, rates, same_text, count):
    base_word = first_word["--checkpoint model.onnx"]
    base_rate = rates["--checkpoint model.onnx"]
    print()
    print(f"The default runtime (`--runtime auto`), one run; the first run exported to ONNX in {first_run:.1f} s "
          f"(first word included). Same text from all three: {'yes' if same_text else 'NO'}.")
    print()
    print(f"| `cnnctc predict` | first word, fresh process (s) | vs model.onnx | batch 32, {count} images (images/s) "
          "| vs model.onnx |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in first_word:
        print(f"| {name} | {first_word[name]:.2f} | {first_word[name] / base_word:.2f}x | {rates[name]:.1f} | "
              f"{rates[name] / base_rate:.2f} |")


if __name__ == "__main__":
    main()
