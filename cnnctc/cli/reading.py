"""Commands that read words: predict and eval."""
import argparse
import os
import sys

from .._checks import MAX_EVAL_BATCH, MAX_LABEL_LENGTH
from ..errors import CnnctcError, shown, shown_list
from ._args import Command, device_arg, int_at_least, model_arg, progress_bar, runtime_arg
from .._streams import is_terminal
from ._stdout import finite, json_line, printable, write_line


def decoder_arguments(p, top_k=True):
    from .._checks import MAX_BEAM_WIDTH, MAX_TOP_K, MAX_WORD_LENGTH
    p.add_argument("--decoder", choices=("greedy", "beam"), default="greedy",
                   help="greedy: best class per column (default, fastest); beam: CTC prefix beam search, "
                   "summing over alignments")
    p.add_argument("--beam-width", type=int_at_least(1, MAX_BEAM_WIDTH, "a wider beam costs memory and time and "
                   "changes no reading"), help=f"with --decoder beam: prefixes the beam keeps (default {BEAM_WIDTH}, "
                   f"at most {MAX_BEAM_WIDTH})")
    if top_k:
        p.add_argument("--top-k", type=int_at_least(1, MAX_TOP_K, "readings reported per image"), default=1,
                       help="readings to report per image, best first (beam or lexicon; shown with --format json)")
    p.add_argument("--lexicon", metavar="FILE", help="read only words from this UTF-8 file (one word per "
                   "line): the word with the highest CTC probability")
    p.add_argument("--max-distance", type=int_at_least(0, MAX_WORD_LENGTH, "the longest lexicon word"),
                   metavar="D", help="with a lexicon: only words within D edits of the greedy reading (the CRNN "
                   "protocol; faster on large lexicons)")
    p.add_check(_decoder_combination_problem)


BEAM_WIDTH = 10  # --beam-width's default


def _decoder_combination_problem(args):
    """What is wrong with the decoder options taken together (a usage error), or None.

    Each of --beam-width, --top-k > 1 and --max-distance means something only beside another
    option; given without it, it would be ignored or refused later, so it is refused at once."""
    lexicon, per_image = getattr(args, "lexicon", None), getattr(args, "per_image_lexicon", False)
    lexicons = "--lexicon FILE or --per-image-lexicon" if hasattr(args, "per_image_lexicon") else "--lexicon FILE"
    if lexicon and per_image:
        return ("--lexicon FILE and --per-image-lexicon both choose the words of every sample; give one of them "
                "(--per-image-lexicon reads each sample's own lexicon from the LMDB)")
    if args.max_distance is not None and not (lexicon or per_image):
        return f"--max-distance limits the words of a lexicon; add {lexicons}, or leave --max-distance out"
    if args.decoder == "beam" and lexicon:
        return ("--decoder beam and --lexicon FILE: the lexicon decoder reads every image, so the beam would never "
                "run; give one of them")
    if args.beam_width is not None and args.decoder != "beam":
        return "--beam-width sets the beam of --decoder beam; add --decoder beam, or leave --beam-width out"
    top_k = getattr(args, "top_k", 1)
    if top_k > 1 and args.decoder != "beam" and not lexicon:
        return (f"--top-k {top_k} needs --decoder beam or --lexicon FILE: greedy decoding has one reading per "
                "image")
    width = BEAM_WIDTH if args.beam_width is None else args.beam_width
    if top_k > width and args.decoder == "beam":
        return (f"--top-k {top_k} is more than --beam-width {width}: the beam keeps only {width} readings; raise "
                "--beam-width or lower --top-k")
    return None


def _decoder_options(args):
    """The decoder settings of predict/eval; the lexicon file is read (and refused) before any model loads."""
    from ..decoding import make_decoder, read_lexicon
    lexicon = read_lexicon(args.lexicon) if getattr(args, "lexicon", None) else None
    width = BEAM_WIDTH if args.beam_width is None else args.beam_width
    options = {"beam_width": width, "top_k": getattr(args, "top_k", 1), "lexicon": lexicon,
               "max_distance": args.max_distance}
    make_decoder(args.decoder, **options)  # checks the combination now
    return options


def model_file_problem(model, checkpoint_option="--checkpoint"):
    """Why ``--model MODEL`` is a file or folder named where a registered uid belongs (with the option that
    takes it), or None."""
    if not model or not os.path.lexists(model):
        return None
    from ..registry import list_models
    if model.strip().strip("/") in {entry.uid for entry in list_models()}:
        return None
    kind = "folder" if os.path.isdir(model) else "file"
    return (f"--model {model} is a {kind}, and --model takes the uid of a registered model (`cnnctc list` shows "
            f"them); pass a checkpoint or an exported model as {checkpoint_option} {model}")


def _reader(args):
    from ..recognizer import Recognizer
    problem = model_file_problem(getattr(args, "model", None))
    if problem:
        raise CnnctcError(problem)
    return Recognizer(args.checkpoint, batch_size=args.batch_size, device_target=args.device_target,
                      model=getattr(args, "model", None), manifest=getattr(args, "manifest", None),
                      decoder=args.decoder, decoder_options=_decoder_options(args), runtime=args.runtime)


def _model_and_runtime(p, checkpoint_help):
    model_arg(p)
    p.add_argument("--checkpoint", help=checkpoint_help)
    p.add_argument("--batch-size", type=int_at_least(1, 4096), default=32,
                   help="images per network call (default 32)")
    device_arg(p)
    runtime_arg(p)


def predict_arguments(p):
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    _model_and_runtime(p, "checkpoint to use: .ckpt, .onnx or .mindir (default: the model's, downloaded and "
                       "verified)")
    p.add_argument("--format", choices=("text", "json", "tsv"), default="text",
                   help="text: 'path: word (confidence)'; tsv: path<TAB>word<TAB>confidence; json: one object "
                   "per line with per-character probabilities")
    p.add_argument("--recursive", action="store_true", help="descend into subfolders (and ** in globs)")
    decoder_arguments(p)


def predict(args):
    from ..transforms import ImageError, find_images
    paths = find_images(args.paths, recursive=args.recursive)
    if not paths:
        raise CnnctcError(f"no image files in {shown_list(args.paths)}" +
                          ("" if args.recursive else "; --recursive also reads subfolders"))
    reader = _reader(args)
    show_progress = not args.quiet and is_terminal(sys.stderr) and any(os.path.isdir(p) for p in args.paths)
    failed = 0
    with progress_bar(len(paths), show_progress) as bar:
        for path, result in reader.recognize_each(paths, with_chars=args.format == "json"):
            bar.update(1)
            if isinstance(result, ImageError):
                failed += 1
                bar.write(f"cnnctc: error: {result}", file=sys.stderr)
                continue
            path = printable(path)  # a newline or tab in a file name must not break the line format
            if args.format == "tsv":
                line = f"{path}\t{result.text}\t{finite(path, result.confidence):.4f}"
            elif args.format == "json":
                line = json_line(path, result)
            else:
                line = f"{path}: {result.text} ({finite(path, result.confidence):.3f})"
            write_line(bar, line)
    if failed:
        print(f"cnnctc: {failed} of {len(paths)} inputs could not be read", file=sys.stderr)
    return 1 if failed else 0


def eval_arguments(p):
    from ..protocols import DEFAULT_PROTOCOL, PROTOCOLS
    _model_and_runtime(p, "checkpoint to evaluate: .ckpt, .onnx or .mindir (default: the model's)")
    p.add_argument("--data", nargs="+", required=True, metavar="LMDB", help="evaluation LMDB datasets")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    decoder_arguments(p, top_k=False)
    p.add_argument("--per-image-lexicon", action="store_true", help="read each sample that carries a lexicon "
                   "(LMDB key lexicon-NNNNNNNNN, one word per line; make-lmdb takes it from a third column) "
                   "as its best lexicon word: the field's lexicon protocol (IIIT5K 50/1k, SVT 50)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                   help="the reference whose rules decide what is kept and compared: zoo (default; the model "
                   "zoo's eval.py, how the card's accuracy was measured: labels of at most 13 symbols of the "
                   "alphabet), dtrb (DTRB's test.py: at most 25), dtrb-unfiltered (DTRB's --data_filtering_off: "
                   "every label, the symbols outside the alphabet removed from the truth)")
    p.add_argument("--max-length", type=int_at_least(1, MAX_LABEL_LENGTH, "a longer label could never be read"),
                   metavar="N", help="longest label kept, in symbols "
                   "(default: the protocol's: 13, 25, or every length for dtrb-unfiltered)")
    p.add_argument("--drop-last", type=int_at_least(1, MAX_EVAL_BATCH), metavar="N", help="score only full batches of N samples "
                   "per dataset, the rest skipped: --drop-last 256 gives the count of the zoo's eval.py")
    p.add_argument("--predictions", metavar="FILE", help="write one JSON line per sample, kept or not: dataset, "
                   "index, label, truth as compared, prediction, confidence, correct, edit distance, why skipped")
    p.add_argument("--overwrite", action="store_true", help="replace the --predictions FILE if it exists")
    p.add_check(lambda args: "--overwrite replaces the --predictions FILE; give one, or leave --overwrite out"
                if args.overwrite and not args.predictions else None)


def evaluate(args):
    import json
    from ..evaluation import check_predictions_path, evaluate as run, format_table, report
    inputs = [args.checkpoint, args.lexicon, getattr(args, "manifest", None)]
    if args.predictions:  # refused before the model loads
        check_predictions_path(args.predictions, args.overwrite, [*args.data, *inputs])
    # --max-distance belongs to the decoder only with a lexicon for every image; a per-image
    # lexicon takes it in evaluate.
    reader = _reader(argparse.Namespace(**{**vars(args), "max_distance": args.max_distance if args.lexicon else None}))
    settings = {"protocol": args.protocol, "max_length": args.max_length, "drop_last": args.drop_last}
    results, total = run(reader, args.data, **settings, per_image_lexicon=args.per_image_lexicon,
                         max_distance=args.max_distance if args.per_image_lexicon else None,
                         predictions=args.predictions, overwrite=args.overwrite, inputs=inputs)
    if not total.kept:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(total.skipped_by.items())) or "the datasets are empty"
        where = f"; {args.predictions} lists each sample" if args.predictions else ""
        raise CnnctcError(f"no sample could be evaluated under the {args.protocol} protocol ({reasons}; the "
                          f"alphabet is {shown(reader.alphabet)}){where}")
    if args.json:
        print(json.dumps(report(results, total, **settings), indent=2, ensure_ascii=False))
    else:
        print(format_table(results, total, **settings))
    return 0


COMMANDS = [
    Command("predict", "read the words in images: files, folders and globs; one line per image", predict_arguments,
            predict, ("cnnctc predict --model cnnctc/synth-scene word.png",
                      "cnnctc predict photos/ --recursive --checkpoint run/best.ckpt --format json")),
    Command("eval", "word accuracy and normalized edit distance per dataset and in total, under the protocol of "
            "the model zoo (default) or of DTRB", eval_arguments, evaluate,
            ("cnnctc eval --checkpoint run/best.ckpt --data IIIT5k_3000.lmdb",
             "cnnctc eval --data IIIT5k_3000.lmdb SVT.lmdb --protocol dtrb --predictions readings.jsonl")),
]
