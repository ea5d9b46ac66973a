"""The ``cnnctc`` command. Each subcommand parses its arguments and calls the Python API."""
import argparse
import contextlib
import logging
import os
import sys

from .errors import CnnctcError

log = logging.getLogger("cnnctc")


def _entry(args):
    """The registry entry the command works on: --model UID, --manifest FILE, or the default."""
    from .registry import get_model
    return get_model(getattr(args, "model", None), manifest=getattr(args, "manifest", None))


def _manifest(args):
    return _entry(args).manifest


class _NoBar:
    def update(self, n):
        pass

    def write(self, line, file):
        print(line, file=file, flush=file is sys.stderr)


def _progress_bar(total, enabled):
    import contextlib
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    from tqdm import tqdm
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)


def cmd_info(args):
    import json
    from .download import check_cached
    entry = _entry(args)
    manifest = entry.manifest
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False))
        return 0
    from .loader import select_device  # validates --device-target before anything is printed
    device = select_device(args.device_target)
    path = manifest.cache_path(args.cache_dir)
    print(f"model:        {manifest.uid}")
    print(f"card:         {entry.card or '(a user manifest: ' + manifest.source + ')'}")
    if manifest.accuracy is not None:
        print(f"accuracy:     {manifest.accuracy}% (card; trained on {manifest.train_dataset or '?'})")
    print(f"asset:        {manifest.url}")
    print(f"sha256:       {manifest.sha256}")
    print(f"alphabet:     {manifest.alphabet} ({manifest.num_class} classes, blank = {manifest.blank_index})")
    print(f"cache path:   {path}")
    print(f"cache state:  {check_cached(manifest, args.cache_dir)}")
    from ._mindspore import mindspore as ms
    print(f"mindspore:    {ms.__version__}")
    print(f"device:       {device}")
    return 0


def cmd_list(args):
    from .download import check_cached
    from .registry import list_models
    rows = [("uid", "accuracy", "size", "cached")]
    for entry in list_models():
        manifest = entry.manifest
        state = check_cached(manifest, args.cache_dir)
        path = manifest.cache_path(args.cache_dir)
        size = f"{path.stat().st_size / 2**20:.0f} MiB" if state != "missing" else "-"
        rows.append((manifest.uid, f"{manifest.accuracy}" if manifest.accuracy is not None else "-", size, state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_download(args):
    from .download import fetch
    manifest = _manifest(args)
    if args.sha256:
        if not args.url:
            raise CnnctcError("--sha256 names another file and needs --url")
        name = args.url.rstrip("/").rsplit("/", 1)[-1]
        manifest = manifest.replace(url=args.url, sha256=args.sha256.lower(), file_name=name)
    path = fetch(manifest, args.cache_dir, url=args.url, force=args.force, allow_http=args.allow_http or None,
                 quiet=args.quiet)
    print(path)
    return 0


def cmd_verify(args):
    from .download import sha256_file
    manifest = _manifest(args)
    path = args.path or manifest.cache_path(args.cache_dir)
    if not os.path.isfile(path):
        what = "not a file" if os.path.exists(path) else "no such file"
        raise CnnctcError(f"{path}: {what}" + ("" if args.path else f"; `cnnctc download --model {manifest.uid}` "
                                                                       "fetches it"))
    actual = sha256_file(path)  # an explicit check reads every byte, whatever the stamp says
    if actual == manifest.sha256:
        print(f"OK  {path}  sha256 {actual}")
        return 0
    print(f"cnnctc: error: {path}: SHA-256 mismatch for {manifest.uid} (expected {manifest.sha256}, "
          f"actual {actual})", file=sys.stderr)
    return 1


def cmd_hub_install(args):
    from .hub import hub_install
    for card, code_dir in hub_install(args.hub_dir, getattr(args, "model", None),
                                      manifest=getattr(args, "manifest", None)):
        print(f"{card}  (code: {code_dir})")
    return 0


def cmd_slim(args):
    from .checkpoint import slim
    kept, dropped = slim(args.src, args.dst)
    print(f"{args.dst}: kept {kept} entries, dropped {dropped} optimizer entries")
    return 0


def cmd_predict(args):
    import json
    from .recognizer import Recognizer, find_images
    from .transforms import ImageError
    paths = find_images(args.paths, recursive=args.recursive)
    reader = Recognizer(args.checkpoint, batch_size=args.batch_size, device_target=args.device_target,
                        model=getattr(args, "model", None), manifest=getattr(args, "manifest", None))
    show_progress = not args.quiet and sys.stderr.isatty() and any(os.path.isdir(p) for p in args.paths)
    failed = 0
    with _progress_bar(len(paths), show_progress) as bar:
        for path, result in reader.recognize_each(paths, with_chars=args.format == "json"):
            bar.update(1)
            if isinstance(result, ImageError):
                failed += 1
                bar.write(f"cnnctc: error: {result}", file=sys.stderr)
                continue
            if args.format == "tsv":
                line = f"{path}\t{result.text}\t{result.confidence:.4f}"
            elif args.format == "json":
                line = json.dumps({"path": path, "text": result.text, "confidence": round(result.confidence, 6),
                                   "chars": [[c, round(p, 6)] for c, p in result.chars]}, ensure_ascii=False)
            else:
                line = f"{path}: {result.text} ({result.confidence:.3f})"
            bar.write(line, file=sys.stdout)
    if failed:
        print(f"cnnctc: {failed} of {len(paths)} inputs could not be read", file=sys.stderr)
    return 1 if failed else 0


def cmd_make_lmdb(args):
    from .data import make_lmdb
    with _progress_bar(None, not args.quiet and sys.stderr.isatty()) as bar:
        stats = make_lmdb(args.images_dir, args.labels_file, args.out, overwrite=args.overwrite, progress=bar.update)
    print(f"{args.out}: {stats}")
    return 0


def cmd_render(args):
    from .render import write_word_images
    labels = write_word_images(args.out, args.count, alphabet=args.alphabet, seed=args.seed, noise=args.noise,
                               words=args.words)
    print(f"{args.out}: {args.count if not args.words else len(args.words)} images, labels in {labels}")
    return 0


def cmd_finetune(args):
    from .train import TrainConfig, finetune
    config = TrainConfig(alphabet=args.alphabet, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, save_every=args.save_every, output_channel=args.output_channel,
                         seed=args.seed, log_every=args.log_every)
    pretrained = None if args.pretrained == "none" else args.pretrained
    result = finetune(args.train, args.valid, args.out, pretrained=pretrained, config=config, resume=args.resume,
                      manifest=getattr(args, "manifest", None), device_target=args.device_target)
    print(f"last checkpoint: {result.last_checkpoint} (step {result.steps})")
    if result.best_accuracy >= 0:
        print(f"best checkpoint: {result.best_checkpoint} (validation accuracy {result.best_accuracy:.2f}%)")
    return 0


def cmd_eval(args):
    import json
    from .evaluation import evaluate, format_table
    from .recognizer import Recognizer
    reader = Recognizer(args.checkpoint, batch_size=args.batch_size, device_target=args.device_target,
                        model=getattr(args, "model", None), manifest=getattr(args, "manifest", None))
    results, total = evaluate(reader, args.data)
    if args.json:
        print(json.dumps({"datasets": [r.as_dict() for r in results], "total": total.as_dict()}, indent=2))
    else:
        print(format_table(results, total))
    return 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _common_options(parser, after_command=False):
    # After the command name the options default to SUPPRESS, so that they do not reset what
    # was given before it.
    default = {"default": argparse.SUPPRESS} if after_command else {}
    parser.add_argument("--manifest", **default, help="manifest JSON naming the checkpoint (default: "
                        "CNNCTC_MANIFEST, else the hub asset)")
    parser.add_argument("-q", "--quiet", action="store_true", **default, help="no progress bars or info messages")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cnnctc", description="CNN-CTC scene-text recognition for MindSpore (hub model "
        "mindspore/1.3/cnnctc_mjstiiit): fetch and verify the checkpoint, read word images, fine-tune.")
    _common_options(parser)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, after_command=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(func=func)
        return p

    def cache_arg(p):
        p.add_argument("--cache-dir", help="cache root shared with MindSpore Hub (default: CNNCTC_CACHE_DIR, "
                       "else ~/.mscache)")

    def model_arg(p):
        p.add_argument("--model", metavar="UID", help="hub uid of the model (default: "
                       "mindspore/1.3/cnnctc_mjstiiit; `cnnctc list` shows all)")

    p = add("info", cmd_info, "show the model's card, asset, cache path and state, MindSpore version and device")
    model_arg(p)
    cache_arg(p)
    p.add_argument("--device-target", help="Ascend, GPU or CPU (default: the first available)")
    p.add_argument("--json", action="store_true", help="print the model's manifest as JSON (a starting point "
                   "for a CNNCTC_MANIFEST of your own)")

    p = add("list", cmd_list, "list every registered hub uid with its accuracy, cached size and state "
            "(missing, verified or corrupt)")
    cache_arg(p)

    p = add("download", cmd_download, "download and verify the checkpoint; prints its local path")
    model_arg(p)
    cache_arg(p)
    p.add_argument("--url", help="download from this URL (a mirror) instead; the manifest's SHA-256 still binds "
                   "unless --sha256 is given")
    p.add_argument("--sha256", help="with --url: the SHA-256 of another file to fetch")
    p.add_argument("--force", action="store_true", help="replace a cached file that fails verification")
    p.add_argument("--allow-http", action="store_true", help="allow a plain http:// URL")

    p = add("verify", cmd_verify, "check a file's SHA-256 against the model's (exit 0 match, 1 otherwise)")
    model_arg(p)
    cache_arg(p)
    p.add_argument("path", nargs="?", help="file to check (default: the cached asset)")

    p = add("hub-install", cmd_hub_install, "lay the hub cards and this package out under the hub's cache so "
            "that mindspore_hub.load(uid) uses them (every registered uid, or --model UID)")
    model_arg(p)
    p.add_argument("--hub-dir", help="the hub's directory (default: CNNCTC_CACHE_DIR, else ~/.mscache)")

    p = add("predict", cmd_predict, "read the words in images: files, folders and globs; one line per image")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    model_arg(p)
    p.add_argument("--checkpoint", help="checkpoint to use (default: the manifest's, downloaded and verified)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per network call (default 32)")
    p.add_argument("--format", choices=("text", "json", "tsv"), default="text",
                   help="text: 'path: word (confidence)'; tsv: path<TAB>word<TAB>confidence; json: one object "
                   "per line with per-character probabilities")
    p.add_argument("--recursive", action="store_true", help="descend into subfolders (and ** in globs)")
    p.add_argument("--device-target", help="Ascend, GPU or CPU (default: the first available)")

    p = add("render", cmd_render, "draw synthetic word images with the installed fonts (for demos and tests); "
            "writes OUT/NNNNN.png and OUT/labels.tsv for make-lmdb")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--count", type=_positive_int, default=100, help="random words to draw (default 100)")
    p.add_argument("--words", nargs="+", help="draw these words instead of random ones")
    p.add_argument("--alphabet", default="0123456789abcdefghijklmnopqrstuvwxyz", help="symbols of random words")
    p.add_argument("--noise", action="store_true", help="slant and blur the words")
    p.add_argument("--seed", type=int, default=0)

    p = add("make-lmdb", cmd_make_lmdb, "build an LMDB dataset in the field's format from images and a labels "
            "file (one 'relative/path<TAB>text' per line); unreadable images and empty labels are skipped")
    p.add_argument("images_dir", metavar="IMAGES_DIR")
    p.add_argument("labels_file", metavar="LABELS_FILE")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = add("finetune", cmd_finetune, "fine-tune from the hub weights (official recipe: centered RMSProp, warm-up "
            "then cosine, loss scale 8096); under msrun, data-parallel over the workers")
    p.add_argument("--train", nargs="+", required=True, metavar="LMDB", help="training LMDB datasets")
    p.add_argument("--valid", nargs="+", metavar="LMDB", help="validation LMDB datasets (accuracy per epoch)")
    p.add_argument("--out", required=True, metavar="DIR", help="where checkpoints go")
    p.add_argument("--pretrained", default="hub", metavar="hub|PATH|none",
                   help="start from the hub checkpoint (default), a checkpoint file, or random weights")
    p.add_argument("--alphabet", help="symbols to read (default: the pretrained one's); a new alphabet gets a "
                   "new head, the backbone still comes from the pretrained weights")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--epochs", type=_positive_int, default=3, help="passes over the data (default 3)")
    group.add_argument("--steps", type=_positive_int, help="optimizer steps (instead of --epochs)")
    p.add_argument("--batch-size", type=_positive_int, default=192, help="images per step and worker (default 192)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--save-every", type=_positive_int, default=1000, help="steps between checkpoints (default 1000)")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose checkpoints are in DIR")
    p.add_argument("--output-channel", type=_positive_int, default=512,
                   help="network width (default 512, the published one)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-every", type=_positive_int, default=50, help="steps between log lines")
    p.add_argument("--device-target", help="Ascend, GPU or CPU (default: the first available)")

    p = add("eval", cmd_eval, "word accuracy and normalized edit distance per dataset and in total")
    model_arg(p)
    p.add_argument("--checkpoint", help="checkpoint to evaluate (default: the manifest's)")
    p.add_argument("--data", nargs="+", required=True, metavar="LMDB", help="evaluation LMDB datasets")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device-target", help="Ascend, GPU or CPU (default: the first available)")

    p = add("slim", cmd_slim, "write a weights-only copy of a checkpoint (drops the optimizer state)")
    p.add_argument("src")
    p.add_argument("dst")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ warnings drown the output otherwise
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="cnnctc: %(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except CnnctcError as exc:
        print(f"cnnctc: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cnnctc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `cnnctc predict ... | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, MemoryError) as exc:
        print(f"cnnctc: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug of ours: still one line, with the way to the details
        if os.environ.get("CNNCTC_DEBUG"):
            raise
        print(f"cnnctc: error: unexpected {type(exc).__name__}: {_one_line(exc)} (a bug in cnnctc; "
              "run again with CNNCTC_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return 1


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text if len(text) <= 2000 else text[:2000] + " ..."


if __name__ == "__main__":
    sys.exit(main())
