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
    path = entry.bundled or manifest.cache_path(args.cache_dir)  # a bundled model is never in the cache
    print(f"model:        {manifest.uid}")
    print(f"card:         {entry.card or '(a user manifest: ' + manifest.source + ')'}")
    if manifest.accuracy is not None:
        print(f"accuracy:     {manifest.accuracy}% (card; trained on {manifest.train_dataset or '?'})")
    print(f"asset:        {manifest.url}")
    print(f"sha256:       {manifest.sha256}")
    print(f"alphabet:     {manifest.alphabet} ({manifest.num_class} classes, blank = {manifest.blank_index})")
    print(f"{'file:       ' if entry.bundled else 'cache path: '}  {path}")
    print(f"cache state:  {check_cached(manifest, args.cache_dir)}")
    from ._mindspore import mindspore as ms
    print(f"mindspore:    {ms.__version__}")
    print(f"device:       {device}")
    return 0


def cmd_list(args):
    from .download import check_cached
    from .registry import bundled_asset, get_model, list_models
    rows = [("uid", "accuracy", "size", "cached")]
    entries = list_models()
    if getattr(args, "manifest", None):  # a user's manifest is listed (and checked) too
        entries.append(get_model(manifest=args.manifest))
    for entry in entries:
        manifest = entry.manifest
        state = check_cached(manifest, args.cache_dir)  # 'bundled' for a model shipped in the package
        bundled = bundled_asset(manifest)
        path = bundled or manifest.cache_path(args.cache_dir)
        size = "-" if state == "missing" else f"{path.stat().st_size / 2**20:.{1 if bundled else 0}f} MiB"
        rows.append((manifest.uid, f"{manifest.accuracy}" if manifest.accuracy is not None else "-", size, state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_download(args):
    from .download import asset_for_url, fetch
    manifest = _manifest(args)
    if args.sha256:
        if not args.url:
            raise CnnctcError("--sha256 names another file and needs --url")
        manifest = asset_for_url(manifest, args.url, args.sha256)  # checked before any network access
    path = fetch(manifest, args.cache_dir, url=args.url, force=args.force, allow_http=args.allow_http or None,
                 quiet=args.quiet)
    print(path)
    return 0


def cmd_verify(args):
    from .download import sha256_file
    entry = _entry(args)
    manifest = entry.manifest
    path = args.path or entry.bundled or manifest.cache_path(args.cache_dir)  # a bundled model: its packaged file
    if not args.path and not os.path.exists(path):
        raise CnnctcError(f"{path}: no such file; `cnnctc download --model {manifest.uid}` fetches it")
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
                                      manifest=getattr(args, "manifest", None), overwrite=args.overwrite):
        print(f"{card}  (code: {code_dir})")
    return 0


def cmd_slim(args):
    from .checkpoint import slim
    kept, dropped = slim(args.src, args.dst, overwrite=args.overwrite)
    print(f"{args.dst}: kept {kept} entries, dropped {dropped} optimizer entries")
    return 0


def _decoder_options(args):
    """The decoder settings of predict/eval; the lexicon file is read (and refused) before any model loads."""
    from .decoding import make_decoder, read_lexicon
    lexicon = read_lexicon(args.lexicon) if getattr(args, "lexicon", None) else None
    options = {"beam_width": args.beam_width, "top_k": getattr(args, "top_k", 1), "lexicon": lexicon,
               "max_distance": args.max_distance}
    make_decoder(args.decoder, **options)  # checks the combination now
    return options


def _reader(args):
    from .recognizer import Recognizer
    return Recognizer(args.checkpoint, batch_size=args.batch_size, device_target=args.device_target,
                      model=getattr(args, "model", None), manifest=getattr(args, "manifest", None),
                      decoder=args.decoder, decoder_options=_decoder_options(args))


def _printable(name):
    name = os.fspath(name) if not isinstance(name, str) else name
    return name if name.isprintable() else name.encode("unicode_escape", "backslashreplace").decode("ascii")


def _json_line(path, result):
    import json
    def number(value):  # six significant digits: sequence probabilities can be tiny
        return float(f"{value:.6g}")
    record = {"path": path, "text": result.text, "confidence": number(result.confidence),
              "chars": [[c, number(p)] for c, p in result.chars]}
    if result.alternatives:
        record["alternatives"] = [{"text": text, "confidence": number(prob)} for text, prob in result.alternatives]
    if result.greedy is not None:
        record["greedy"] = result.greedy
    return json.dumps(record, ensure_ascii=False)


def cmd_predict(args):
    from .transforms import ImageError, find_images
    paths = find_images(args.paths, recursive=args.recursive)
    if not paths:
        raise CnnctcError(f"no image files in {', '.join(args.paths)}" +
                          ("" if args.recursive else "; --recursive also reads subfolders"))
    reader = _reader(args)
    show_progress = not args.quiet and sys.stderr.isatty() and any(os.path.isdir(p) for p in args.paths)
    failed = 0
    with _progress_bar(len(paths), show_progress) as bar:
        for path, result in reader.recognize_each(paths, with_chars=args.format == "json"):
            bar.update(1)
            if isinstance(result, ImageError):
                failed += 1
                bar.write(f"cnnctc: error: {result}", file=sys.stderr)
                continue
            path = _printable(path)  # a newline or tab in a file name must not break the line format
            if args.format == "tsv":
                line = f"{path}\t{result.text}\t{result.confidence:.4f}"
            elif args.format == "json":
                line = _json_line(path, result)
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
    from .render import MARKER, resolve_fonts, write_word_images
    fonts = resolve_fonts(args.font)
    labels = write_word_images(args.out, args.count, alphabet=args.alphabet, seed=args.seed, noise=args.noise,
                               words=args.words, fonts=fonts, overwrite=args.overwrite)
    print(f"{args.out}: {args.count if not args.words else len(args.words)} images, labels in {labels}")
    if fonts == [None]:
        print("fonts: Pillow's built-in font only (no --font given and none of fonts-dejavu-core, "
              "fonts-liberation, fonts-freefont-ttf is installed)")
    else:
        print(f"fonts: {', '.join(os.path.basename(f) for f in fonts)} (paths and SHA-256 in "
              f"{os.path.join(args.out, MARKER)})")
    return 0


def _render_count(text):
    from .render import MAX_COUNT
    value = _positive_int(text)
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT} images per set, got {value}; render "
                                         "several sets instead")
    return value


def _finite_positive_float(text):
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _channel_width(text):
    value = int(text)
    if value < 16 or value % 16:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 16 (512 is the published width), got {value}")
    return value


def _alphabet_arg(text):
    if not text:
        raise argparse.ArgumentTypeError("is empty; give the symbols to read, or leave it out for the pretrained "
                                         "model's alphabet")
    repeated = sorted({c for c in text if text.count(c) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"repeats {''.join(repeated)!r}; every symbol must appear once")
    if any(c in "\t\r\n\0" for c in text):
        raise argparse.ArgumentTypeError("holds a tab, newline or NUL")
    return text


def _seed_arg(text):
    value = int(text)
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be from 0 to {2 ** 32 - 1}, got {value}")
    return value


def _msrun_workers():
    """The number of workers when msrun started this process (a worker or its scheduler), else None."""
    if os.environ.get("MS_ROLE") not in ("MS_WORKER", "MS_SCHED"):
        return None
    try:
        workers = int(os.environ.get("MS_WORKER_NUM", "1"))
    except ValueError:
        raise CnnctcError(f"MS_WORKER_NUM is {os.environ['MS_WORKER_NUM']!r}, not a number of workers") from None
    return workers if workers > 1 else None


def _join_cluster():
    """Join msrun's cluster: (rank, world) for a worker, None for msrun's scheduler process (its
    init() serves the cluster until the workers are done)."""
    from mindspore.communication import get_group_size, get_rank, init
    try:
        init()
    except RuntimeError as exc:
        raise CnnctcError(f"cannot join the msrun cluster ({str(exc).strip().splitlines()[0]})") from None
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return None
    return get_rank(), get_group_size()


def cmd_finetune(args):
    from .train import TrainConfig, Trainer
    config = TrainConfig(alphabet=args.alphabet, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, save_every=args.save_every, output_channel=args.output_channel,
                         seed=args.seed, log_every=args.log_every)
    config.check()
    workers = _msrun_workers()
    trainer = Trainer(args.train, args.valid, args.out, pretrained=args.pretrained, config=config,
                      resume=args.resume, manifest=getattr(args, "manifest", None), model=getattr(args, "model", None),
                      device_target=args.device_target, rank=0 if workers else None, world=workers)
    if workers:
        from .loader import configure_context
        configure_context(args.device_target)  # before init(): MindSpore fixes the device when it joins
        # Every process, msrun's scheduler too, checks the settings before the cluster forms, so a bad
        # one ends the whole job at once instead of leaving the scheduler waiting for its workers.
        trainer.check()
        cluster = _join_cluster()
        if cluster is None:  # the scheduler: the workers did the training
            return 0
        trainer.set_rank(*cluster)
    result = trainer.run()
    print(f"last checkpoint: {result.last_checkpoint} (step {result.steps})")
    if result.best_accuracy >= 0:
        print(f"best checkpoint: {result.best_checkpoint} (validation accuracy {result.best_accuracy:.2f}%)")
    return 0


def cmd_eval(args):
    import json
    from .evaluation import evaluate, format_table
    if args.max_distance is not None and not (args.lexicon or args.per_image_lexicon):
        raise CnnctcError("--max-distance needs --lexicon FILE or --per-image-lexicon")
    reader = _reader(args)
    results, total = evaluate(reader, args.data, per_image_lexicon=args.per_image_lexicon,
                              max_distance=args.max_distance)
    if not total.kept:
        raise CnnctcError(f"no sample could be evaluated ({total.skipped} skipped: labels empty, longer than "
                          f"{reader.manifest.max_label_length} or outside the alphabet {reader.alphabet!r}, or "
                          "unreadable images)")
    if args.json:
        print(json.dumps({"datasets": [r.as_dict() for r in results], "total": total.as_dict()}, indent=2))
    else:
        print(format_table(results, total))
    return 0


def cmd_export(args):
    from .export import export_model
    path = export_model(args.out, format=args.format, checkpoint=args.checkpoint, model=args.model,
                        manifest=getattr(args, "manifest", None), batch_size=args.batch_size,
                        device_target=args.device_target, overwrite=args.overwrite)
    batch = f"batch {args.batch_size}" if args.batch_size else "dynamic batch"
    where = "in its metadata" if args.format == "onnx" else f"in {path.name}.json beside it"
    print(f"{path}: {args.format.upper()}, {batch}; alphabet, preprocessing and source {where}")
    return 0


def cmd_quantize(args):
    from .quantize import quantize_model
    report = quantize_model(args.model_file, args.calib, args.out, max_images=args.max_images,
                            per_channel=not args.per_tensor, overwrite=args.overwrite)
    print(report)
    return 0


def _int_at_least(low):
    """An argparse type: a whole number of at least ``low``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


_non_negative_int = _int_at_least(0)
_positive_int = _int_at_least(1)


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
    from . import __version__
    parser.add_argument("--version", action="version", version=f"cnnctc {__version__}")
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

    def decoder_args(p, top_k=True):
        p.add_argument("--decoder", choices=("greedy", "beam"), default="greedy",
                       help="greedy: best class per column (default, fastest); beam: CTC prefix beam search, "
                       "summing over alignments")
        p.add_argument("--beam-width", type=_positive_int, default=10, help="prefixes the beam keeps (default 10)")
        if top_k:
            p.add_argument("--top-k", type=_positive_int, default=1, help="readings to report per image, best "
                           "first (beam or lexicon; shown with --format json)")
        p.add_argument("--lexicon", metavar="FILE", help="read only words from this UTF-8 file (one word per "
                       "line): the word with the highest CTC probability")
        p.add_argument("--max-distance", type=_non_negative_int, metavar="D", help="with a lexicon: only words "
                       "within D edits of the greedy reading (the CRNN protocol; faster on large lexicons)")

    def model_arg(p):
        p.add_argument("--model", metavar="UID", help="uid of a registered model (default: "
                       "mindspore/1.3/cnnctc_mjstiiit; cnnctc/mini-synth is shipped in the package and reads "
                       "offline; `cnnctc list` shows all)")

    p = add("info", cmd_info, "show the model's card, asset, cache path and state, MindSpore version and device")
    model_arg(p)
    cache_arg(p)
    p.add_argument("--device-target", help="Ascend, GPU or CPU (default: the first available)")
    p.add_argument("--json", action="store_true", help="print the model's manifest as JSON (a starting point "
                   "for a CNNCTC_MANIFEST of your own)")

    p = add("list", cmd_list, "list every registered model with its accuracy, size and state: the hub uids "
            "(missing, verified or corrupt in the cache) and cnnctc/mini-synth (bundled in the package)")
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
    p.add_argument("--overwrite", action="store_true", help="also replace code directories and cards this "
                   "command did not write (e.g. the hub client's own git checkout)")

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
    decoder_args(p)

    p = add("render", cmd_render, "draw synthetic word images with the installed fonts (for demos and tests); "
            "writes OUT/NNNNN.png and OUT/labels.tsv for make-lmdb")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--count", type=_render_count, default=100, help="random words to draw (default 100, at most "
                   "1000000)")
    p.add_argument("--words", nargs="+", help="draw these words instead of random ones")
    p.add_argument("--font", nargs="+", metavar="FILE", help="font files to draw with, in turn (default: the "
                   "installed DejaVu, Liberation and FreeFont files, else Pillow's own font)")
    p.add_argument("--alphabet", default="0123456789abcdefghijklmnopqrstuvwxyz", help="symbols of random words")
    p.add_argument("--noise", action="store_true", help="slant and blur the words")
    p.add_argument("--seed", type=int, default=0, help="seed of the random words, fonts and colours (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a set this command rendered into OUT before "
                   "(never a folder holding anything else)")

    p = add("make-lmdb", cmd_make_lmdb, "build an LMDB dataset in the field's format from images and a labels "
            "file (one 'relative/path<TAB>text' per line, optionally <TAB>a per-image lexicon of words separated "
            "by spaces); unreadable images and empty labels are skipped and counted")
    p.add_argument("images_dir", metavar="IMAGES_DIR")
    p.add_argument("labels_file", metavar="LABELS_FILE")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it is an LMDB (never a folder "
                   "holding anything else, nor one that is, holds or contains the inputs)")

    p = add("finetune", cmd_finetune, "fine-tune from the hub weights (official recipe: centered RMSProp, warm-up "
            "then cosine, loss scale 8096); under msrun, data-parallel over the workers. Every setting and path is "
            "checked before training starts; a run whose loss or weights become NaN stops with its last good "
            "checkpoint kept")
    p.add_argument("--train", nargs="+", required=True, metavar="LMDB", help="training LMDB datasets")
    p.add_argument("--valid", nargs="+", metavar="LMDB", help="validation LMDB datasets (accuracy per epoch)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the checkpoints (created if needed; a "
                   "folder holding another run's checkpoints is refused unless it is the --resume folder; other "
                   "files in it are left alone)")
    p.add_argument("--pretrained", default="hub", metavar="hub|UID|PATH|none",
                   help="start from the selected model's hub checkpoint (default), another registered model's "
                   "(e.g. mindspore/1.8/cnnctc_mjstiiit), a checkpoint file, or random weights")
    p.add_argument("--alphabet", type=_alphabet_arg, help="symbols to read (default: the pretrained checkpoint's); a "
                   "new alphabet gets a new head, the backbone still comes from the pretrained weights")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--epochs", type=_positive_int, default=3, help="passes over the data (default 3)")
    group.add_argument("--steps", type=_positive_int, help="optimizer steps (instead of --epochs)")
    p.add_argument("--batch-size", type=_positive_int, default=192, help="images per step and worker (default 192)")
    p.add_argument("--lr", type=_finite_positive_float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--save-every", type=_positive_int, default=1000, help="steps between checkpoints (default 1000)")
    p.add_argument("--resume", metavar="DIR", help="continue the unfinished run whose checkpoints are in DIR, with "
                   "its own settings (--steps, --lr, ... may be repeated but not changed; to train a finished run "
                   "further, start a new run with --pretrained DIR/cnnctc-<step>.ckpt)")
    p.add_argument("--output-channel", type=_channel_width, default=512,
                   help="network width, a multiple of 16 (default 512, the published one)")
    p.add_argument("--seed", type=_seed_arg, default=1, help="seed of the initial weights and data order (default 1)")
    p.add_argument("--log-every", type=_positive_int, default=50, help="steps between log lines (default 50)")
    p.add_argument("--device-target", help="Ascend, GPU or CPU (default: the first available)")

    p = add("eval", cmd_eval, "word accuracy and normalized edit distance per dataset and in total")
    model_arg(p)
    p.add_argument("--checkpoint", help="checkpoint to evaluate (default: the manifest's)")
    p.add_argument("--data", nargs="+", required=True, metavar="LMDB", help="evaluation LMDB datasets")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per network call (default 32)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device-target", help="Ascend, GPU or CPU (default: the first available)")
    decoder_args(p, top_k=False)
    p.add_argument("--per-image-lexicon", action="store_true", help="read each sample that carries a lexicon "
                   "(LMDB key lexicon-NNNNNNNNN, one word per line; make-lmdb takes it from a third column) "
                   "as its best lexicon word: the field's lexicon protocol (IIIT5K 50/1k, SVT 50)")

    p = add("slim", cmd_slim, "write a weights-only copy of a checkpoint (drops the optimizer state)")
    p.add_argument("src", help="checkpoint to read (left untouched)")
    p.add_argument("dst", help="weights-only checkpoint to write")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")

    p = add("export", cmd_export, "export the model to ONNX (for onnxruntime), MindIR (MindSpore 2.7-2.8) "
            "or AIR (Ascend); the file carries its alphabet and preprocessing, so predict and eval take it as "
            "--checkpoint")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="UID", help="hub uid whose checkpoint to export (default: "
                        "mindspore/1.3/cnnctc_mjstiiit; `cnnctc list` shows all)")
    source.add_argument("--checkpoint", metavar="CKPT", help="checkpoint to export (its alphabet and width "
                        "come along)")
    p.add_argument("--format", choices=("onnx", "mindir", "air"), required=True,
                   help="onnx: opset 13, metadata in the file; mindir/air: description in FILE.json beside it; "
                   "air needs an Ascend device")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, ending with .onnx, .mindir or .air")
    p.add_argument("--batch-size", type=_positive_int, metavar="N", help="fix the batch size (default: any batch)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.add_argument("--device-target", help="Ascend, GPU or CPU (default: the first available)")

    p = add("quantize", cmd_quantize, "write a static int8 copy of an exported ONNX model (onnxruntime's QDQ "
            "quantizer), calibrated on your images; prints its agreement with the float model. Check the "
            "accuracy cost with `cnnctc eval --checkpoint MODEL.int8.onnx --data LMDB`")
    p.add_argument("model_file", metavar="MODEL.onnx", help="float ONNX file written by `cnnctc export`")
    p.add_argument("--calib", nargs="+", required=True, metavar="PATH",
                   help="calibration images: files, folders (recursively), globs or LMDBs, like those the model "
                   "will read; unreadable ones are skipped")
    p.add_argument("--out", required=True, metavar="MODEL.int8.onnx", help="int8 file to write")
    p.add_argument("--max-images", type=_positive_int, default=256, metavar="N",
                   help="calibration images to use, spread over all given (default 256)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per output "
                   "channel (less accurate; for runtimes without per-channel support)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    return parser


def main(argv=None):
    for stream in (sys.stdout, sys.stderr):  # file names that are not valid UTF-8 still print
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ warnings drown the output otherwise
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="cnnctc: %(message)s",
                        stream=sys.stderr)
    from ._signals import terminate_as_interrupt
    try:
        with terminate_as_interrupt():  # MindSpore turns Ctrl-C into SIGTERM once a graph has run
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
    except MemoryError:  # its message is empty: say what happened
        print("cnnctc: error: out of memory; ask for less at once (a smaller --count, --batch-size or "
              "--max-images) or free memory", file=sys.stderr)
        return 1
    except OSError as exc:
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
