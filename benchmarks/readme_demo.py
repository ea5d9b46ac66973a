"""Rerun the documentation's demo (render, make-lmdb, finetune, eval greedy/beam/lexicon, export, quantize,
msrun: docs/finetune.md, docs/recognize.md, docs/deploy.md) exactly as written there, and print the tables
whose numbers those pages show (the script kept its name from when the README held them).

Every command is a line of those pages (tests/test_readme_demo.py checks that they are), run in a
work folder as `python -m cnnctc ...`; the numbers printed come from their output and their wall
times. The images depend on the fonts: the pages' numbers need the nine font files of the Debian
packages fonts-dejavu-core, fonts-liberation and fonts-freefont-ttf (`render` then uses all of
them; the script refuses to run without them unless --fonts-of names a subset, which shows what
changes with fewer fonts).

    python benchmarks/readme_demo.py [--work DIR] [--quick] [--msrun] [--fonts-of dejavu|liberation|freefont]

--quick runs the same pipeline at a reduced size (a few dozen images, 6 steps), each cnnctc line
in this process rather than a new one: the CI test, so the pipeline cannot rot; its accuracies and
times mean nothing.
"""
import argparse
import glob
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnnctc.render import FONT_CANDIDATES  # noqa: E402

PACKAGES = {"dejavu": "fonts-dejavu-core", "liberation": "fonts-liberation", "freefont": "fonts-freefont-ttf"}
FULL = {"train": 2000, "valid": 200, "hard": 200, "steps": 300, "batch": 32, "words": 10000, "msrun_steps": 100}
QUICK = {"train": 48, "valid": 8, "hard": 8, "steps": 6, "batch": 8, "words": 300, "msrun_steps": 4}

# The pages' lines, with the sizes as fields (FULL fills them as the pages have them).
TRAIN = [
    "cnnctc render demo/train --count {train} --alphabet 0123456789",
    "cnnctc render demo/valid --count {valid} --alphabet 0123456789 --seed 5",
    "cnnctc make-lmdb demo/train demo/train/labels.tsv demo/train.lmdb",
    "cnnctc make-lmdb demo/valid demo/valid/labels.tsv demo/valid.lmdb",
    "cnnctc finetune --train demo/train.lmdb --valid demo/valid.lmdb --out demo/run --pretrained none "
    "--alphabet 0123456789 --steps {steps} --batch-size {batch} --lr 1e-3 --output-channel 64",
    "cnnctc eval --checkpoint demo/run/best.ckpt --data demo/valid.lmdb",
]
PREDICT = "cnnctc predict demo/valid/0000[0-4].png --checkpoint demo/run/best.ckpt"
HARD = [
    "cnnctc render demo/hard --count {hard} --alphabet 0123456789 --seed 7 --noise",
    "cnnctc make-lmdb demo/hard demo/hard/labels.tsv demo/hard.lmdb",
]
WORDS = ("python3 -c \"import random; r = random.Random(0); w = {{l.split()[1] for l in open('demo/hard/labels.tsv')}}\n"
         "while len(w) < {words}: w.add(''.join(r.choice('0123456789') for _ in range(r.randint(2, 8))))\n"
         "open('demo/words.txt', 'w').write('\\n'.join(sorted(w)) + '\\n')\"")
DECODERS = [
    ("greedy", "cnnctc eval --checkpoint demo/run/best.ckpt --data demo/hard.lmdb"),
    ("beam, width 10", "cnnctc eval --checkpoint demo/run/best.ckpt --data demo/hard.lmdb --decoder beam"),
    ("lexicon, {words:,} words", "cnnctc eval --checkpoint demo/run/best.ckpt --data demo/hard.lmdb "
     "--lexicon demo/words.txt"),
]
DEPLOY = [
    "cnnctc export --checkpoint demo/run/best.ckpt --format onnx --out demo/model.onnx",
    "cnnctc export --checkpoint demo/run/best.ckpt --format mindir --out demo/model.mindir",
    "cnnctc quantize demo/model.onnx --calib demo/train.lmdb --out demo/model.int8.onnx",
    "cnnctc predict demo/valid --checkpoint demo/model.int8.onnx",
    "cnnctc eval --checkpoint demo/model.int8.onnx --data demo/valid.lmdb",
]
# The checkpoint's first word is timed on MindSpore: under the default --runtime auto, with the onnx
# extra, a .ckpt is read from its cached ONNX export after the first run (the .onnx row's time).
MODELS = [("`best.ckpt` (`--runtime mindspore`; with optimizer state)", "demo/run/best.ckpt"),
          ("`model.onnx` (onnxruntime float32)", "demo/model.onnx"),
          ("`model.int8.onnx` (onnxruntime int8)", "demo/model.int8.onnx")]
MSRUN = [
    'export PATH="$PWD/.venv/bin:$PATH"',
    "msrun --worker_num=2 --local_worker_num=2 --master_addr=127.0.0.1 --master_port=8118 "
    '--log_dir=msrun_logs --join=True "$(command -v cnnctc)" finetune --train demo/train.lmdb '
    "--valid demo/valid.lmdb --out demo/run2 --pretrained none --alphabet 0123456789 --steps {msrun_steps} "
    "--batch-size 16 --lr 1e-3 --output-channel 64",
]


def readme_lines(sizes=FULL):
    """Every command line this script runs, as the documentation must show it."""
    return ([line.format(**sizes) for line in TRAIN + [PREDICT] + HARD + [WORDS]] +
            [command.format(**sizes) for _, command in DECODERS] + [line.format(**sizes) for line in DEPLOY + MSRUN])


class Demo:
    def __init__(self, work, sizes, fonts, in_process=False):
        self.work, self.sizes, self.fonts, self.in_process = work, sizes, fonts, in_process
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    def run(self, line, show=True):
        """Run one documented line in the work folder; returns (stdout, seconds). With ``in_process`` a
        cnnctc line runs in this process (cnnctc.cli.run_captured): the same command without a new
        process's MindSpore import, for --quick, whose times mean nothing anyway."""
        line = line.format(**self.sizes)
        print(f"$ {line}", flush=True)
        start = time.perf_counter()
        if line.startswith("python3 -c "):
            done = self._subprocess([sys.executable, "-c", shlex.split(line)[2]])
        else:
            args = []
            for arg in shlex.split(line)[1:]:
                if any(c in arg for c in "*?["):  # what the shell would expand
                    matches = sorted(glob.glob(os.path.join(self.work, arg)))
                    args += [os.path.relpath(p, self.work) for p in matches] or [arg]
                else:
                    args.append(arg)
            if args[0] == "render" and self.fonts is not None:
                args += ["--font", *self.fonts]
            done = self._in_process(args) if self.in_process else self._subprocess([sys.executable, "-m", "cnnctc", *args])
        seconds = time.perf_counter() - start
        if show:
            sys.stdout.write(done.stdout)
        if done.returncode:
            sys.stderr.write(done.stderr)
            sys.exit(f"failed (exit {done.returncode}): {line}")
        return done.stdout, seconds

    def _subprocess(self, argv):
        return subprocess.run(argv, cwd=self.work, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)

    def _in_process(self, args):
        from cnnctc.cli import run_captured
        here = os.getcwd()
        os.chdir(self.work)
        try:
            code, out, err = run_captured(args)
        finally:
            os.chdir(here)
        return subprocess.CompletedProcess(args, code, out, err)

    def msrun(self, line):
        """The documentation's msrun lines, run by bash as written: ``.venv`` in the work folder is this
        interpreter's virtual environment, which must have the ``cnnctc`` command installed."""
        venv = Path(self.work) / ".venv"
        if not venv.exists():
            venv.symlink_to(sys.prefix, target_is_directory=True)
        if not (venv / "bin" / "cnnctc").is_file():
            sys.exit(f"{sys.prefix}/bin/cnnctc is missing: install the package (pip install -e .) to run msrun")
        script = "set -e\n" + "\n".join(l.format(**self.sizes) for l in MSRUN) + "\n"
        print("$ " + "\n$ ".join(l.format(**self.sizes) for l in MSRUN), flush=True)
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", script], cwd=self.work, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if done.returncode:
            sys.stdout.write(done.stdout[-3000:])
            sys.exit(f"msrun failed (exit {done.returncode})")
        return time.perf_counter() - start


def machine():
    """This machine as the documentation names it: CPU model, cores, AVX-512, and the versions that matter."""
    from importlib.metadata import version
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"^model name\s*:\s*(.+)$", info, re.M).group(1)
        flags = set(re.search(r"^flags\s*:\s*(.+)$", info, re.M).group(1).split())
    except (OSError, AttributeError):
        pass
    avx = "AVX-512 (VNNI)" if "avx512_vnni" in flags else "AVX-512" if "avx512f" in flags else "no AVX-512"
    versions = ", ".join(f"{name} {version(name)}" for name in ("mindspore", "onnxruntime", "pillow"))
    return f"{os.cpu_count()} cores of {cpu}, {avx}; {versions}, Python {platform.python_version()}"


def total_row(table):
    """(accuracy, 1-N.E.D.) of an eval table's total line."""
    cells = [line.split() for line in table.splitlines() if line.startswith("total")][0]
    return float(cells[-2]), float(cells[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--quick", action="store_true", help="reduced size, in this process: checks the pipeline, not the numbers")
    parser.add_argument("--msrun", action="store_true", help="also run the documentation's two-rank msrun block")
    parser.add_argument("--fonts-of", choices=sorted(PACKAGES), nargs="+",
                        help="render with only these packages' font files (what a machine with fewer fonts sees)")
    args = parser.parse_args()

    fonts = None
    if args.fonts_of:
        fonts = [f for f in FONT_CANDIDATES if any(f"/{key}/" in f for key in args.fonts_of)]
    missing = [f for f in (fonts or FONT_CANDIDATES) if not os.path.isfile(f)]
    if missing:
        sys.exit(f"missing fonts: {', '.join(missing)}; install {' '.join(PACKAGES.values())} (the documentation's numbers "
                 "need them), or name the installed packages with --fonts-of")
    work = args.work or tempfile.mkdtemp(prefix="readme-demo.")
    os.makedirs(work, exist_ok=True)
    demo = Demo(work, QUICK if args.quick else FULL, fonts, in_process=args.quick)
    try:
        for line in TRAIN:
            out, _ = demo.run(line)
        valid = {"best.ckpt": total_row(out)}
        predicted, _ = demo.run(PREDICT)
        for line in HARD + [WORDS]:
            demo.run(line)
        decoders = []
        for name, line in DECODERS:
            out, seconds = demo.run(line)
            decoders.append((name.format(**demo.sizes), *total_row(out), seconds))
        fixed = lexicon_example(demo)
        for line in DEPLOY:
            out, _ = demo.run(line, show="predict" not in line)
            if line.startswith("cnnctc quantize"):
                agreement = [l for l in out.splitlines() if "agreement" in l][0]
        valid["model.int8.onnx"] = total_row(out)  # the last line: eval of the int8 file
        hard = {"best.ckpt": decoders[0][1:3]}     # greedy, above
        rows = []
        for label, path in MODELS:
            name = os.path.basename(path)
            if name not in valid:
                valid[name] = total_row(demo.run(f"cnnctc eval --checkpoint {path} --data demo/valid.lmdb",
                                                 show=False)[0])
            if name not in hard:
                hard[name] = total_row(demo.run(f"cnnctc eval --checkpoint {path} --data demo/hard.lmdb",
                                                show=False)[0])
            runtime = " --runtime mindspore" if path.endswith(".ckpt") else ""
            _, first = demo.run(f"cnnctc predict --checkpoint {path} demo/valid/00000.png{runtime}", show=False)
            size = os.path.getsize(os.path.join(work, path)) / 1e6
            rows.append((label, size, valid[name][0], hard[name][0], first))
        print("\n## README tables" + (" (--quick: sizes reduced, numbers meaningless)" if args.quick else ""))
        print(f"machine: {machine()}")
        print(f"fonts: {', '.join(os.path.basename(f) for f in fonts or FONT_CANDIDATES)}")
        print("\npredict (first five validation words):\n" + predicted.rstrip())
        print(f"\nvalid.lmdb with best.ckpt: accuracy {valid['best.ckpt'][0]:.2f} %, 1-N.E.D. {valid['best.ckpt'][1]:.4f}")
        print("\n| decoder | accuracy % | 1-N.E.D. | wall time of the eval |\n| --- | ---: | ---: | ---: |")
        for name, accuracy, ned, seconds in decoders:
            print(f"| {name} | {accuracy:.2f} | {ned:.4f} | {seconds:.1f} s |")
        print(f"\n{fixed}")
        print("\n| file | size | valid.lmdb accuracy % | hard.lmdb accuracy % | first word, fresh process |\n"
              "| --- | ---: | ---: | ---: | ---: |")
        for label, size, valid_acc, hard_acc, first in rows:
            print(f"| {label} | {size:.1f} MB | {valid_acc:.2f} | {hard_acc:.2f} | {first:.1f} s |")
        print(f"\nquantize: {agreement}")
        if args.msrun:
            seconds = demo.msrun(MSRUN)
            print(f"msrun, two workers, {demo.sizes['msrun_steps']} steps: {seconds:.0f} s, "
                  f"{sorted(os.listdir(os.path.join(work, 'demo', 'run2')))}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def lexicon_example(demo):
    """The readings the lexicon fixed, and the first of them in JSON with its runner-up."""
    def readings(extra):
        out, _ = demo.run("cnnctc predict demo/hard --checkpoint demo/run/best.ckpt --format tsv" + extra, show=False)
        return {row.split("\t")[0]: row.split("\t")[1] for row in out.splitlines()}
    truth = dict(line.split("\t") for line in Path(demo.work, "demo/hard/labels.tsv").read_text().splitlines())
    greedy, lexicon = readings(""), readings(" --lexicon demo/words.txt")
    fixed = [p for p in sorted(greedy) if greedy[p] != truth[os.path.basename(p)] == lexicon[p]]
    broken = [p for p in sorted(greedy) if greedy[p] == truth[os.path.basename(p)] != lexicon[p]]
    text = f"the lexicon fixed {len(fixed)} readings and broke {len(broken)}"
    if fixed:
        path = fixed[0]
        out, _ = demo.run(f"cnnctc predict {path} --checkpoint demo/run/best.ckpt --lexicon demo/words.txt "
                          "--format json --top-k 2", show=False)
        record = json.loads(out)
        runner_up = record.get("alternatives", [])[:1] or [{"text": "-", "confidence": 0}]  # runner-ups, best first
        text += (f"; e.g. {path} (truth {truth[os.path.basename(path)]!r}): greedy read {greedy[path]!r}, with the "
                 f"lexicon {record['text']!r} (probability {record['confidence']:.3f}), runner-up "
                 f"{runner_up[0]['text']!r} ({runner_up[0]['confidence']:.3f})")
    return text


if __name__ == "__main__":
    main()
