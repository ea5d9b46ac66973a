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


def output_arguments(p, what):
    p.add_argument("--output", metavar="FILE", help=f"write {what} to FILE instead of standard output (under "
                   "msrun, where each worker's standard output goes to its log, rank 0 writes it); written under a "
                   "temporary name and moved into place at the end")


def predict_arguments(p):
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    _model_and_runtime(p, "checkpoint to use: .ckpt, .onnx or .mindir (default: the model's, downloaded and "
                       "verified)")
    p.add_argument("--format", choices=("text", "json", "tsv"), default="text",
                   help="text: 'path: word (confidence)'; tsv: path<TAB>word<TAB>confidence; json: one object "
                   "per line with per-character probabilities")
    p.add_argument("--recursive", action="store_true", help="descend into subfolders (and ** in globs)")
    decoder_arguments(p)
    output_arguments(p, "the lines")
    p.add_argument("--overwrite", action="store_true", help="replace the --output FILE if it exists")
    p.add_check(lambda args: "--overwrite replaces the --output FILE; give one, or leave --overwrite out"
                if args.overwrite and not args.output else None)


def _msrun():
    """(launch, writes): how msrun started this process (None: alone), and whether it writes the outputs."""
    from ..ranks import msrun_launch
    launch = msrun_launch()
    return launch, launch is None or launch.rank == 0


def _output_file(args, inputs):
    """The --output file (checked before any model loads), or None for standard output."""
    from .._result_files import ResultFile
    if args.output is None:
        return None
    return ResultFile(args.output, args.overwrite, [p for p in inputs if p], noun="output file",
                      doing="writing the output")


def _record(path, result):
    """One image's reading as plain data: what msrun's ranks send to rank 0, and what is printed."""
    from ..transforms import ImageError
    if isinstance(result, ImageError):
        return {"path": path, "error": str(result)}
    return {"path": path, "text": result.text, "confidence": float(result.confidence),
            "chars": [[c, float(p)] for c, p in result.chars], "greedy": result.greedy,
            "alternatives": [[t, float(p)] for t, p in result.alternatives]}


def _line(record, form, stream=None):
    from ..decoding import Prediction
    path = printable(record["path"])  # a newline or tab in a file name must not break the line format
    if form == "tsv":
        return f"{path}\t{record['text']}\t{finite(path, record['confidence']):.4f}"
    if form == "json":
        result = Prediction(record["text"], record["confidence"], tuple(map(tuple, record["chars"])),
                            record["greedy"], tuple(map(tuple, record["alternatives"])))
        return json_line(path, result, stream)
    return f"{path}: {record['text']} ({finite(path, record['confidence']):.3f})"


def predict(args):
    from ..ranks import Meeting, serve
    launch, writes = _msrun()
    if launch is not None and launch.is_scheduler:
        return serve(launch)
    with Meeting(launch) as meeting:   # joined first: a rank that fails from here on is reported at once
        return _predict(args, meeting, writes)


def _size(path):
    try:
        return os.stat(path).st_size
    except (OSError, ValueError):
        return None


def _predict(args, meeting, writes):
    from ..transforms import find_images
    paths = find_images(args.paths, recursive=args.recursive)
    if not paths:
        raise CnnctcError(f"no image files in {shown_list(args.paths)}" +
                          ("" if args.recursive else "; --recursive also reads subfolders"))
    out = _output_file(args, [*paths, *args.paths, args.checkpoint, args.lexicon, getattr(args, "manifest", None)]) \
        if writes else None
    reader = _reader(args)
    show_progress = not args.quiet and is_terminal(sys.stderr) and any(os.path.isdir(p) for p in args.paths)
    units = [paths[start:start + reader.batch_size] for start in range(0, len(paths), reader.batch_size)]
    from ..recognizer import reader_identity
    task = {"command": "predict", "paths": [os.path.abspath(p) for p in paths], "format": args.format,
            "sizes": [_size(p) for p in paths], "reader": reader_identity(reader)}
    failed = 0
    with progress_bar(len(paths), show_progress) as bar:
        def read(unit):
            records = [_record(path, result) for path, result in
                       reader.recognize_each(unit, with_chars=args.format == "json")]
            bar.update(len(records))
            return records
        records = meeting.gather(units, read, task)
        if records is None:   # another rank: its readings went to rank 0
            return 0
        try:
            if out is not None:
                out.open()
            for record in records:
                if "error" in record:
                    failed += 1
                    bar.write(f"cnnctc: error: {record['error']}", file=sys.stderr)
                elif out is not None:
                    out.write(_line(record, args.format, out) + "\n")
                else:
                    write_line(bar, _line(record, args.format))
            if out is not None:
                out.commit()
        finally:
            if out is not None:
                out.discard()
        meeting.finish()
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
    output_arguments(p, "the table (or the --json)")
    p.add_argument("--overwrite", action="store_true", help="replace the --predictions and --output FILEs if they "
                   "exist (--predictions: only a file eval wrote)")
    p.add_check(lambda args: "--overwrite replaces the --predictions or --output FILE; give one, or leave "
                "--overwrite out" if args.overwrite and not (args.predictions or args.output) else None)
    p.add_check(lambda args: f"--output and --predictions are the same file ({args.output}); give each its own"
                if args.output and args.predictions and os.path.abspath(args.output) == os.path.abspath(
                    args.predictions) else None)


def evaluate(args):
    from ..ranks import Meeting, serve
    launch, writes = _msrun()
    if launch is not None and launch.is_scheduler:
        return serve(launch)
    with Meeting(launch) as meeting:   # joined first: a rank that fails from here on is reported at once
        return _evaluate(args, meeting, writes)


def _evaluate(args, meeting, writes):
    import json
    from ..evaluation import check_predictions_path, evaluate as run, format_table, report
    inputs = [args.checkpoint, args.lexicon, getattr(args, "manifest", None)]
    out = None
    if writes:  # refused before the model loads
        if args.predictions:
            check_predictions_path(args.predictions, args.overwrite, [*args.data, *inputs])
        out = _output_file(args, [*args.data, *inputs, args.predictions])
    # --max-distance belongs to the decoder only with a lexicon for every image; a per-image
    # lexicon takes it in evaluate.
    reader = _reader(argparse.Namespace(**{**vars(args), "max_distance": args.max_distance if args.lexicon else None}))
    settings = {"protocol": args.protocol, "max_length": args.max_length, "drop_last": args.drop_last}
    shown_results = []

    def prepare(results, total):
        """The table (or JSON), and --output written under its temporary name, before --predictions is
        moved into place: a run that cannot write one of them leaves neither."""
        if not total.kept:
            return
        text = json.dumps(report(results, total, **settings), indent=2, ensure_ascii=False) if args.json \
            else format_table(results, total, **settings)
        shown_results.append(text)
        if out is not None:
            out.open()
            out.write(text + "\n")
            out.recheck()

    try:
        evaluated = run(reader, args.data, **settings, per_image_lexicon=args.per_image_lexicon,
                        max_distance=args.max_distance if args.per_image_lexicon else None,
                        predictions=args.predictions, overwrite=args.overwrite, inputs=inputs, ranks=meeting,
                        before_commit=prepare)
        if evaluated is None:   # another rank: its readings went to rank 0
            return 0
        results, total = evaluated
        if not total.kept:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(total.skipped_by.items())) or \
                "the datasets are empty"
            where = f"; {args.predictions} lists each sample" if args.predictions else ""
            raise CnnctcError(f"no sample could be evaluated under the {args.protocol} protocol ({reasons}; the "
                              f"alphabet is {shown(reader.alphabet)}){where}")
        if out is None:
            print(shown_results[0])
        else:
            out.commit()
    finally:
        if out is not None:
            out.discard()
    return 0


COMMANDS = [
    Command("predict", "read the words in images: files, folders and globs; one line per image (under msrun each "
            "worker reads its share and rank 0 writes every line)", predict_arguments,
            predict, ("cnnctc predict --model cnnctc/synth-scene word.png",
                      "cnnctc predict photos/ --recursive --checkpoint run/best.ckpt --format json")),
    Command("eval", "word accuracy and normalized edit distance per dataset and in total, under the protocol of "
            "the model zoo (default) or of DTRB; under msrun each worker reads its share and rank 0 writes exactly "
            "one process's results", eval_arguments, evaluate,
            ("cnnctc eval --checkpoint run/best.ckpt --data IIIT5k_3000.lmdb",
             "cnnctc eval --data IIIT5k_3000.lmdb SVT.lmdb --protocol dtrb --predictions readings.jsonl --json "
             "--output scores.json")),
]
