"""`cnnctc eval` alone and under `msrun --worker_num=2` on this machine: seconds, images/s, ratio.

Renders ``--images`` words into an LMDB, then times the whole command (process start, model
load, reading, scoring) in turn, alone and with two msrun workers on 127.0.0.1, for the bundled
``cnnctc/mini-synth`` (width 64) and for the full-size network (width 512, the published one;
seeded random weights saved as a checkpoint), on onnxruntime and on MindSpore. Every msrun run's
predictions file must equal the one process's, byte for byte, or the script stops. One untimed
run of each first (onnxruntime's export of a checkpoint is made once, into the cache). Prints a
Markdown table and the machine.

    python benchmarks/bench_msrun.py [--images 2000] [--repeats 2]
"""
import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GLOG_v", "3")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(folder, count):
    """The LMDB of rendered words and the full-size checkpoint."""
    import io
    from bench_runtimes import seeded_network
    from cnnctc.checkpoint import save_checkpoint
    from cnnctc.data import write_lmdb
    from cnnctc.render import find_fonts, random_words, render_word
    rng = random.Random(0)
    fonts = find_fonts()
    samples = []
    for i, word in enumerate(random_words(count, "0123456789abcdefghijklmnopqrstuvwxyz", rng=rng)):
        buffer = io.BytesIO()
        render_word(word, font=fonts[i % len(fonts)] if fonts else None, rng=rng, noise=True).save(buffer, "PNG")
        samples.append((buffer.getvalue(), word))
    write_lmdb(folder / "words.lmdb", samples)
    full = save_checkpoint(seeded_network(0), folder / "full.ckpt",
                           metadata={"alphabet": "0123456789abcdefghijklmnopqrstuvwxyz"})
    return folder / "words.lmdb", full


def command(model, runtime, data, predictions):
    chosen = ["--model", model] if model.startswith("cnnctc/") else ["--checkpoint", model]
    return ["eval", *chosen, "--runtime", runtime, "--data", str(data), "--predictions", str(predictions), "-q"]


def timed(argv, cwd):
    start = time.perf_counter()
    run = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    msrun = shutil.which("msrun", path=str(Path(sys.executable).parent)) or shutil.which("msrun")
    if msrun is None:
        sys.exit("msrun (installed with mindspore) is not on PATH")
    script = str(ROOT / "cnnctc" / "__main__.py")
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["PATH"] = env_path
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, full = make_inputs(tmp, args.images)
        for label, model in (("cnnctc/mini-synth (width 64)", "cnnctc/mini-synth"), ("full size (width 512)", str(full))):
            for runtime in ("onnxruntime", "mindspore"):
                alone, ranks = [], []
                # Untimed: the first onnxruntime run of a checkpoint exports it into the cache.
                timed([sys.executable, script, *command(model, runtime, data, tmp / "warm.jsonl")], tmp)
                (tmp / "warm.jsonl").unlink()
                for repeat in range(args.repeats):   # in turn, so that the machine's drift affects both alike
                    one, two = tmp / f"one-{repeat}.jsonl", tmp / f"two-{repeat}.jsonl"
                    alone.append(timed([sys.executable, script, *command(model, runtime, data, one)], tmp))
                    logs = tmp / f"logs-{repeat}"
                    ranks.append(timed([msrun, "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
                                        f"--master_port={free_port()}", f"--log_dir={logs}", "--join=True",
                                        script, *command(model, runtime, data, two)], tmp))
                    if one.read_bytes() != two.read_bytes():
                        sys.exit(f"{label} on {runtime}: the two workers' predictions differ from one process's")
                    for path in (one, two):
                        path.unlink()
                    shutil.rmtree(logs)
                best_alone, best_ranks = min(alone), min(ranks)
                rows.append((label, runtime, best_alone, best_ranks))
                print(f"{label}, {runtime}: alone {best_alone:.1f} s, 2 workers {best_ranks:.1f} s", file=sys.stderr)
    print(f"`cnnctc eval` on {args.images} rendered words (whole command: start, model load, reading, scoring; "
          f"best of {args.repeats}); the predictions of both runs are the same bytes\n")
    print("| network | runtime | 1 process | 2 msrun workers | images/s (1) | images/s (2) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for label, runtime, one, two in rows:
        print(f"| {label} | {runtime} | {one:.1f} s | {two:.1f} s | {args.images / one:.0f} | {args.images / two:.0f} "
              f"| {one / two:.2f} |")
    from bench_runtimes import machine   # the machine line every benchmark prints
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
