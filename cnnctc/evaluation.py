"""Word accuracy and normalized edit distance on LMDB datasets, under a reference's protocol.

The rules (which samples are kept, the truth compared, unreadable images, the form of
1 - N.E.D.) live in :mod:`cnnctc.protocols`, cited to the references' lines; this module reads
the datasets, runs the recognizer and adds up the scores.
"""
import collections
import contextlib
import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from ._checks import MAX_EVAL_BATCH, MAX_WORD_LENGTH
from .data import LabelFilter, LmdbDataset
from .decoding import ctc_lexicon_decode
from ._result_files import ResultFile, check_result_path, written_by_eval
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS, edit_distance, get_protocol
from .transforms import ImageError, preprocess_image

__all__ = ["evaluate", "EvalResult", "edit_distance", "format_table", "report", "check_predictions_path",
           "PROTOCOLS", "DEFAULT_PROTOCOL"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalResult:
    """The scores of one dataset (or the total): ``kept`` samples scored, ``skipped`` not scored
    (``skipped_by`` counts why), ``unreadable`` images among the kept (scored as the protocol says)."""
    name: str
    kept: int = 0
    skipped: int = 0
    correct: int = 0
    ned_sum: float = 0.0   # sum over the kept samples of the protocol's 1 - N.E.D.
    path: str = None
    unreadable: int = 0
    skipped_by: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    lexicon_fallbacks: int = 0  # kept samples whose per-image lexicon held no usable word: read without it
    first_unreadable: int = dataclasses.field(default=None, compare=False)  # LMDB number of the first unreadable

    @property
    def accuracy(self):
        """Word accuracy in percent; None when nothing was kept (no sample, no accuracy)."""
        return 100.0 * self.correct / self.kept if self.kept else None

    @property
    def norm_ed(self):
        """Mean of 1 - normalized edit distance, in [0, 1] (higher is better); None when nothing was kept."""
        return self.ned_sum / self.kept if self.kept else None

    def add(self, other):
        self.kept += other.kept
        self.skipped += other.skipped
        self.correct += other.correct
        self.ned_sum += other.ned_sum
        self.unreadable += other.unreadable
        if self.first_unreadable is None:
            self.first_unreadable = other.first_unreadable
        self.skipped_by.update(other.skipped_by)
        self.lexicon_fallbacks += other.lexicon_fallbacks

    def _skip(self, reason):
        self.skipped += 1
        self.skipped_by[reason] += 1

    def as_dict(self):
        record = {"dataset": self.name}
        if self.path is not None:
            record["path"] = self.path
        record.update({"kept": self.kept, "skipped": self.skipped, "correct": self.correct,
                       "accuracy": _rounded(self.accuracy, 4), "norm_ed": _rounded(self.norm_ed, 6),
                       "unreadable": self.unreadable, "skipped_by": dict(sorted(self.skipped_by.items())),
                       "lexicon_fallbacks": self.lexicon_fallbacks})
        return record


def _rounded(value, digits):
    return None if value is None else round(value, digits)


def _shown_score(value, digits):
    """A score for the table: "-" where nothing was kept (there is no score, not a score of 0)."""
    return "-" if value is None else f"{value:.{digits}f}"


@dataclasses.dataclass(frozen=True)
class _EveryLabel(LabelFilter):
    """Keeps every label as stored: the protocol decides, so that skipped samples are reported too
    (LmdbDataset's usual filter is training's)."""

    def apply(self, label):
        return label, None


def _open_all(paths, label_filter, preprocess_config):
    """Every dataset opened (and checked) before any is read, so a typo in the last one is found first."""
    datasets = []
    try:
        for path in paths:
            datasets.append(LmdbDataset(path, label_filter, preprocess_config=preprocess_config))
    except BaseException:
        for dataset in datasets:
            dataset.close()
        raise
    return datasets


def _display_names(paths):
    """Each dataset's file name, with as many parent folders as set it apart from the others'."""
    full = [Path(os.path.abspath(p)) for p in paths]
    names = []
    for path in full:
        others = [q for q in full if q != path]
        depth = 1
        while depth < len(path.parts) and any(q.parts[-depth:] == path.parts[-depth:] for q in others):
            depth += 1
        names.append(str(Path(*path.parts[-depth:])))
    return names


def _columns_needed(word):
    """Columns a CTC reading of ``word`` needs: one per symbol, and a blank between two equal ones."""
    return len(word) + sum(a == b for a, b in zip(word, word[1:]))


def _per_image_lexicon(words, alphabet, columns):
    """``words`` stripped and folded like the labels, and kept when the network can read them:
    symbols of ``alphabet`` only, at most MAX_WORD_LENGTH of them, needing at most ``columns``
    columns. Returns (kept words, Counter of why the others were left out)."""
    fold = alphabet == alphabet.lower()
    symbols = set(alphabet)
    kept, dropped = {}, collections.Counter()
    for word in words:
        word = word.strip()
        word = word.lower() if fold else word
        if not word or word in kept:
            continue
        if not symbols.issuperset(word):
            dropped["with symbols outside the alphabet"] += 1
        elif len(word) > MAX_WORD_LENGTH or _columns_needed(word) > columns:
            dropped[f"longer than the network's {columns} columns can read"] += 1
        else:
            kept[word] = None
    return list(kept), dropped


def _whole_number(name, value, smallest, largest=None):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number, not {type(value).__name__}")
    if value < smallest or (largest is not None and value > largest):
        bound = f"from {smallest} to {largest}" if largest is not None else f"at least {smallest}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _number(value):
    return float(f"{value:.6g}")


class _Evaluation:
    """One evaluate() call: the recognizer, the protocol's rules and the optional predictions file.

    The work runs in three steps so that msrun's ranks can share it and still give one process's
    answer: :meth:`plan` decides from the labels alone which samples are scored (the protocol,
    ``max_length`` and ``drop_last`` over the whole dataset); :meth:`read` reads one batch of
    them (a unit of work, on whichever rank holds it); :meth:`tally` adds the readings up in the
    datasets' order, in one process.
    """

    def __init__(self, recognizer, scoring, datasets, *, per_image_lexicon, max_distance, drop_last, out,
                 progress):
        self.recognizer, self.scoring, self.datasets = recognizer, scoring, datasets
        self.per_image_lexicon, self.max_distance = per_image_lexicon, max_distance
        self.drop_last, self.out, self.progress = drop_last, out, progress
        self.dropped_words = collections.Counter()
        self.first_fallback = None  # (dataset name, LMDB number) of the first sample read without its lexicon
        # What the references read in place of an image that does not decode (protocols.py).
        from PIL import Image
        config = recognizer.manifest.preprocess
        self.black_image = preprocess_image(Image.new("RGB", (config.max_width, config.height)), config)

    def plan(self, dataset):
        """(position in the dataset or None, LMDB number, label, truth, why skipped or None) of every
        record, in order; a record the reader could not decode (label missing, not UTF-8) is skipped."""
        scored_limit = None
        if self.drop_last:
            kept = sum(self.scoring.truth(dataset.label(i))[0] is not None for i in range(len(dataset)))
            scored_limit = kept // self.drop_last * self.drop_last
        rows, next_key, scored = [], 1, 0
        for position in range(len(dataset)):
            key = dataset.key(position)
            rows += [(None, missing, None, None, "corrupt record") for missing in range(next_key, key)]
            next_key = max(next_key, key + 1)
            label = dataset.label(position)
            truth, reason = self.scoring.truth(label)
            if reason is None and scored_limit is not None and scored >= scored_limit:
                reason = f"after the last full batch of {self.drop_last}"
            scored += reason is None
            rows.append((position, key, label, truth, reason))
        declared = len(dataset) + sum(dataset.skipped.values())  # records the reader could not decode
        rows += [(None, missing, None, None, "corrupt record") for missing in range(next_key, declared + 1)]
        return rows

    def units(self, plans):
        """The batches to read: (dataset number, positions of its scored samples), in order."""
        batch = self.recognizer.batch_size
        units = []
        for number, plan in enumerate(plans):
            scored = [row[0] for row in plan if row[4] is None]
            units += [(number, scored[start:start + batch]) for start in range(0, len(scored), batch)]
        return units

    def read(self, unit):
        """The readings of one batch of scored samples: decoded text and confidence, and whether the
        image was unreadable (read as the references do, as a black image) or its lexicon unusable."""
        dataset = self.datasets[unit[0]]
        readings, arrays = [], []
        for position in unit[1]:
            reading = {}
            try:
                arrays.append(dataset.load(position)[0])
            except ImageError as exc:
                arrays.append(self.black_image)
                reading["unreadable"] = str(exc)
            if self.per_image_lexicon and "unreadable" not in reading:
                reading["lexicon"] = dataset.lexicon(position)
            readings.append(reading)
        recognizer, alphabet = self.recognizer, self.recognizer.alphabet
        logits = recognizer.logits(np.stack(arrays))
        predictions = recognizer.decode(logits, alphabet)
        for i, reading in enumerate(readings):
            words = reading.pop("lexicon", None)
            if words:
                kept, dropped = _per_image_lexicon(words, alphabet, logits.shape[1])
                if dropped:
                    reading["dropped"] = dict(dropped)
                if kept:
                    predictions[i] = ctc_lexicon_decode(logits[i:i + 1], alphabet, kept,
                                                        max_distance=self.max_distance)[0]
                else:  # as a lexicon with no usable word: the greedy reading (the recognizer's decoder)
                    reading["fallback"] = True
            reading["decoded"] = predictions[i].text
            reading["confidence"] = _number(predictions[i].confidence)
        if self.progress:
            self.progress(len(readings))
        return readings

    def tally(self, name, path, plan, readings):
        """The dataset's EvalResult from its plan and the readings of its scored samples, in order;
        each record goes to the predictions file."""
        result = EvalResult(name, path=path)
        for position, key, label, truth, reason in plan:
            row = {"dataset": path, "index": key, "label": label}
            if reason is not None:
                result._skip(reason)
                row["skipped"] = reason
            else:
                self._score(result, row, truth, next(readings))
            if self.out is not None:
                self.out.write_json(_line(row))
        return result

    def _score(self, result, row, truth, reading):
        if "unreadable" in reading:
            row["image"] = f"unreadable, scored as a black image: {reading['unreadable']}"
            truth = self.scoring.unreadable_truth()
            result.unreadable += 1
            if result.first_unreadable is None:
                result.first_unreadable = row["index"]
        row["truth"] = truth
        self.dropped_words.update(reading.get("dropped", {}))
        if reading.get("fallback"):
            result.lexicon_fallbacks += 1
            self.first_fallback = self.first_fallback or (result.name, row["index"])
        row["decoded"], row["confidence"] = reading["decoded"], reading["confidence"]
        prediction = self.scoring.prediction(row["decoded"])
        row["prediction"] = prediction
        row["correct"] = prediction == truth and "image" not in row  # an unreadable image is wrong
        row["edit_distance"] = edit_distance(prediction, truth)
        result.kept += 1
        result.correct += row["correct"]
        result.ned_sum += self.scoring.similarity(truth, prediction)


_FIELDS = ("dataset", "index", "label", "truth", "prediction", "decoded", "confidence", "correct", "edit_distance",
           "skipped", "image")


def _line(row):
    return {name: row.get(name) for name in _FIELDS}


def _task(recognizer, paths, plans, settings):
    """What every msrun rank must agree on: the inputs as this rank sees them (the model's bytes,
    every record's number and label) and the settings."""
    import hashlib
    import json
    from .recognizer import reader_identity
    labels = hashlib.sha256(json.dumps([[row[1], row[2]] for plan in plans for row in plan]).encode()).hexdigest()
    return {"command": "eval", "paths": [os.path.abspath(p) for p in paths], "settings": settings,
            "records": [[len(plan), sum(row[4] is None for row in plan)] for plan in plans], "labels": labels,
            "reader": reader_identity(recognizer)}


def evaluate(recognizer, paths, *, protocol=DEFAULT_PROTOCOL, max_length=None, drop_last=None, progress=None,
             per_image_lexicon=False, max_distance=None, predictions=None, overwrite=False, inputs=(),
             ranks="msrun", before_commit=None):
    """Evaluate a :class:`~cnnctc.recognizer.Recognizer` on LMDBs; returns (per-dataset results, total).

    Each is an :class:`EvalResult`; one of which no sample was kept (every label skipped, or all
    after ``drop_last``) has ``accuracy`` and ``norm_ed`` None, not 0.

    ``protocol``: "zoo" (default: the model zoo's eval, how the hub card's accuracy was
    measured), "dtrb" or "dtrb-unfiltered" (DTRB's test.py, without and with
    --data_filtering_off); :mod:`cnnctc.protocols` holds their rules. ``max_length`` replaces the
    protocol's longest kept label. ``drop_last=N`` scores only the first multiple of N kept samples
    of each dataset, as the zoo's eval.py does with 256. With ``per_image_lexicon`` a sample that
    carries a lexicon (LMDB key ``lexicon-%09d``) is read as the lexicon word with the highest CTC
    probability (within ``max_distance`` edits of the greedy reading, if given); one whose lexicon
    holds no word the network can read (symbols outside the alphabet, longer than its columns) is
    read without it, as a sample without a lexicon is, and counted in ``lexicon_fallbacks``.

    ``predictions``: a file to write one JSON line per sample, kept or not (dataset, index, raw
    label, truth as compared, prediction, confidence, correct, edit distance, why skipped). It is
    written under a temporary name and moved into place at the end; an existing file is refused
    unless ``overwrite``, as is a path that is one of ``paths`` or ``inputs`` or lies inside one.

    ``ranks="msrun"`` (default): under ``msrun --worker_num=N`` (N > 1) each worker reads its share
    of the batches and the results are exactly one process's: rank 0 returns them and writes
    ``predictions``; the other ranks return None, and so does msrun's scheduler process, where
    this call relays the readings to rank 0 (see :mod:`cnnctc.ranks`). ``ranks=None``: this
    process evaluates everything, wherever it runs. A :class:`cnnctc.ranks.Launch` gives the rank,
    count and relay address for another launcher; a joined :class:`cnnctc.ranks.Meeting` (the CLI
    joins before it loads the model, so that a rank that fails meanwhile is reported at once).

    ``before_commit(results, total)``: called where the results are made, before the predictions
    file is moved into place; if it raises, nothing is written (the CLI prepares ``--output`` there).
    """
    from . import ranks as ranks_module
    meeting = ranks if isinstance(ranks, ranks_module.Meeting) else None
    if meeting is not None:
        launch = meeting.launch
    elif isinstance(ranks, ranks_module.Launch):
        launch = ranks if ranks.world > 1 or ranks.is_scheduler else None
    elif ranks == "msrun" or ranks is None:
        launch = ranks_module.msrun_launch() if ranks == "msrun" else None
    else:
        raise ValueError(f"ranks must be 'msrun', None, a cnnctc.ranks.Launch or a joined Meeting, got {ranks!r}")
    rules = get_protocol(protocol, max_length)
    _whole_number("drop_last", drop_last, 1, MAX_EVAL_BATCH)
    if max_distance is not None:
        if not per_image_lexicon:
            raise ValueError("max_distance applies to per_image_lexicon; for one lexicon for all images give "
                             "the recognizer's decoder_options a lexicon and max_distance")
        _whole_number("max_distance", max_distance, 0)
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("paths: give at least one LMDB dataset")
    if launch is not None and launch.is_scheduler:
        ranks_module.serve(launch)
        return None
    writes = launch is None or launch.rank == 0
    out = _predictions_file(predictions, overwrite, [*paths, *inputs]) if predictions is not None and writes \
        else None
    alphabet = recognizer.alphabet
    datasets = _open_all(paths, _EveryLabel(alphabet), recognizer.manifest.preprocess)
    run = _Evaluation(recognizer, rules.for_alphabet(alphabet), datasets, per_image_lexicon=per_image_lexicon,
                      max_distance=max_distance, drop_last=drop_last, out=out, progress=progress)
    settings = {"protocol": protocol, "max_length": max_length, "drop_last": drop_last,
                "per_image_lexicon": per_image_lexicon, "max_distance": max_distance}
    results, total = [], EvalResult("total")
    try:
        plans = [run.plan(dataset) for dataset in datasets]
        with contextlib.nullcontext(meeting) if meeting is not None else ranks_module.Meeting(launch) as meeting:
            readings = meeting.gather(run.units(plans), run.read, _task(recognizer, paths, plans, settings))
            if readings is None:   # another rank's share, sent to rank 0
                return None
            if out is not None:
                out.open()
            for dataset, name, plan in zip(datasets, _display_names(paths), plans):
                result = run.tally(name, os.path.abspath(dataset.paths[0]), plan, readings)
                results.append(result)
                total.add(result)
            if before_commit is not None:
                before_commit(results, total)
            if out is not None:
                out.commit()
            meeting.finish()
    finally:
        if out is not None:
            out.discard()
        for dataset in datasets:
            dataset.close()
    for result in results:
        if result.unreadable:
            _warn_unreadable(result, rules.name, run.scoring.unreadable_truth())
    if run.dropped_words:
        log.warning("left out %d per-image lexicon words: %s", sum(run.dropped_words.values()),
                    ", ".join(f"{n} {why}" for why, n in sorted(run.dropped_words.items())))
    if total.lexicon_fallbacks:
        name, number = run.first_fallback
        count = total.lexicon_fallbacks
        log.info("%s per-image lexicon%s no word the network can read, so %s read without one (greedy, or the "
                 "decoder given)%s lexicon-%09d of %s", f"{count} samples'" if count > 1 else "1 sample's",
                 "s hold" if count > 1 else " holds", "they were" if count > 1 else "it was",
                 "; the first is" if count > 1 else ":", number, name)
    return results, total


def _warn_unreadable(result, protocol, truth):
    """One warning line for a dataset with images that do not decode: how many, the first one's
    key, and how the protocol scored them (they are in its accuracy as misreadings)."""
    name = result.name if result.name.isprintable() else result.name.encode("unicode_escape",
                                                                           "backslashreplace").decode("ascii")
    many = result.unreadable > 1
    log.warning("warning: %s: %d of its %d scored images could not be read (%s image-%09d); the %s protocol reads "
                "%s as a black image against the truth %r, so %s counted wrong in its accuracy (--predictions "
                "lists %s)", name, result.unreadable, result.kept, "the first:" if many else "key",
                result.first_unreadable, protocol, "each" if many else "it", truth, "they are" if many else "it is",
                "them" if many else "it")


def _protocol_line(protocol, max_length, drop_last):
    rules = get_protocol(protocol, max_length)
    line = f"protocol: {rules.name} ({rules.description}"
    if max_length is not None:
        line += f"; longest label {max_length}"
    if drop_last:
        line += f"; only full batches of {drop_last}"
    return line + ")"


def report(results, total, *, protocol=DEFAULT_PROTOCOL, max_length=None, drop_last=None):
    """The results as one JSON-ready dict, with the protocol they were measured under."""
    rules = get_protocol(protocol, max_length)
    return {"protocol": rules.name, "max_length": rules.max_length, "drop_last": drop_last,
            "datasets": [r.as_dict() for r in results], "total": total.as_dict()}


def format_table(results, total, *, protocol=None, max_length=None, drop_last=None):
    """A plain-text table like the paper's: one row per dataset and a total (after the protocol's line).

    A dataset of which no sample was kept shows "-" for its accuracy and 1-N.E.D.
    """
    rows = [("dataset", "kept", "skipped", "accuracy %", "1-N.E.D.")]
    rows += [(r.name, str(r.kept), str(r.skipped), _shown_score(r.accuracy, 2), _shown_score(r.norm_ed, 4))
             for r in [*results, total]]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    if protocol is not None:
        lines.insert(0, _protocol_line(protocol, max_length, drop_last))
    return "\n".join(lines)


# The predictions file ----------------------------------------------------------------------------

_BY_EVAL = (written_by_eval, "a predictions file written by eval")


def check_predictions_path(path, overwrite=False, inputs=()):
    """Refuse a predictions file that writing could lose data by (one line saying what to do);
    returns it as a Path. ``inputs``: files and folders it must not be, nor lie inside. With
    ``overwrite`` only a predictions file eval wrote is replaced."""
    return check_result_path(path, overwrite, inputs, replaceable=_BY_EVAL)


def _predictions_file(path, overwrite, inputs):
    return ResultFile(path, overwrite, inputs, replaceable=_BY_EVAL, doing="evaluating")
