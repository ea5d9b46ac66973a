"""Word accuracy and normalized edit distance on LMDB datasets, under a reference's protocol.

The rules (which samples are kept, the truth compared, unreadable images, the form of
1 - N.E.D.) live in :mod:`cnnctc.protocols`, cited to the references' lines; this module reads
the datasets, runs the recognizer and adds up the scores.
"""
import collections
import contextlib
import dataclasses
import errno
import json
import logging
import os
import secrets
import stat
from pathlib import Path

import numpy as np

from ._checks import MAX_EVAL_BATCH, MAX_WORD_LENGTH
from .data import LabelFilter, LmdbDataset
from .decoding import ctc_lexicon_decode
from .errors import CnnctcError
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
    """One evaluate() call: the recognizer, the protocol's rules and the optional predictions file."""

    def __init__(self, recognizer, scoring, *, per_image_lexicon, max_distance, drop_last, out, progress):
        self.recognizer, self.scoring = recognizer, scoring
        self.per_image_lexicon, self.max_distance = per_image_lexicon, max_distance
        self.drop_last, self.out, self.progress = drop_last, out, progress
        self.dropped_words = collections.Counter()
        self.first_fallback = None  # (dataset name, LMDB number) of the first sample read without its lexicon
        # What the references read in place of an image that does not decode (protocols.py).
        from PIL import Image
        config = recognizer.manifest.preprocess
        self.black_image = preprocess_image(Image.new("RGB", (config.max_width, config.height)), config)

    def dataset(self, dataset, name):
        path = os.path.abspath(dataset.paths[0])
        result = EvalResult(name, path=path)
        scored_limit = None
        if self.drop_last:
            kept = sum(self.scoring.truth(dataset.label(i))[0] is not None for i in range(len(dataset)))
            scored_limit = kept // self.drop_last * self.drop_last
        declared = len(dataset) + sum(dataset.skipped.values())  # records the reader could not decode
        state = {"next_key": 1, "scored": 0}
        batch = self.recognizer.batch_size
        for start in range(0, len(dataset), batch):
            rows = []
            for index in range(start, min(start + batch, len(dataset))):
                rows += self._corrupt_rows(result, path, state, dataset.key(index))
                rows.append(self._row(result, path, dataset, index, state, scored_limit))
            self._read([row for row in rows if "image_array" in row], dataset)
            for row in rows:
                self._finish(result, row)
            if self.progress:
                self.progress(len(rows))
        for row in self._corrupt_rows(result, path, state, declared + 1):
            self._finish(result, row)
        return result

    def _corrupt_rows(self, result, path, state, key):
        """Rows for the records before ``key`` that the reader skipped (a label that is missing or not UTF-8)."""
        rows = []
        for missing in range(state["next_key"], key):
            result._skip("corrupt record")
            rows.append({"dataset": path, "index": missing, "label": None, "skipped": "corrupt record"})
        state["next_key"] = max(state["next_key"], key + 1)
        return rows

    def _row(self, result, path, dataset, index, state, scored_limit):
        label = dataset.label(index)
        row = {"dataset": path, "index": dataset.key(index), "label": label}
        truth, reason = self.scoring.truth(label)
        if reason is None and scored_limit is not None and state["scored"] >= scored_limit:
            reason = f"after the last full batch of {self.drop_last}"
        if reason is not None:
            result._skip(reason)
            row["skipped"] = reason
            return row
        state["scored"] += 1
        try:
            row["image_array"] = dataset.load(index)[0]
        except ImageError as exc:
            row["image_array"] = self.black_image
            row["image"] = f"unreadable, scored as a black image: {exc}"
            truth = self.scoring.unreadable_truth()
            result.unreadable += 1
            if result.first_unreadable is None:
                result.first_unreadable = row["index"]
        row["truth"] = truth
        if self.per_image_lexicon and "image" not in row:
            row["lexicon"] = dataset.lexicon(index)
            row["name"] = result.name
        return row

    def _read(self, rows, dataset):
        """Fill in each row's prediction (one network call for the rows of a batch)."""
        if not rows:
            return
        recognizer, alphabet = self.recognizer, self.recognizer.alphabet
        logits = recognizer.logits(np.stack([row.pop("image_array") for row in rows]))
        predictions = recognizer.decode(logits, alphabet)
        for i, row in enumerate(rows):
            words, name = row.pop("lexicon", None), row.pop("name", None)
            if words:
                kept, dropped = _per_image_lexicon(words, alphabet, logits.shape[1])
                self.dropped_words.update(dropped)
                if kept:
                    predictions[i] = ctc_lexicon_decode(logits[i:i + 1], alphabet, kept,
                                                        max_distance=self.max_distance)[0]
                else:  # as a lexicon with no usable word: the greedy reading (the recognizer's decoder)
                    row["lexicon_fallback"] = True
                    self.first_fallback = self.first_fallback or (name, row["index"])
            row["decoded"] = predictions[i].text
            row["confidence"] = _number(predictions[i].confidence)

    def _finish(self, result, row):
        if "decoded" in row:
            truth = row["truth"]
            prediction = self.scoring.prediction(row["decoded"])
            row["prediction"] = prediction
            row["correct"] = prediction == truth and "image" not in row  # an unreadable image is wrong
            row["edit_distance"] = edit_distance(prediction, truth)
            result.kept += 1
            result.correct += row["correct"]
            result.lexicon_fallbacks += row.pop("lexicon_fallback", False)
            result.ned_sum += self.scoring.similarity(truth, prediction)
        if self.out is not None:
            self.out.write(_line(row))


_FIELDS = ("dataset", "index", "label", "truth", "prediction", "decoded", "confidence", "correct", "edit_distance",
           "skipped", "image")


def _line(row):
    return {name: row.get(name) for name in _FIELDS}


def evaluate(recognizer, paths, *, protocol=DEFAULT_PROTOCOL, max_length=None, drop_last=None, progress=None,
             per_image_lexicon=False, max_distance=None, predictions=None, overwrite=False, inputs=()):
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
    """
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
    out = _PredictionsFile(predictions, overwrite, [*paths, *inputs]) if predictions is not None else None
    alphabet = recognizer.alphabet
    datasets = _open_all(paths, _EveryLabel(alphabet), recognizer.manifest.preprocess)
    run = _Evaluation(recognizer, rules.for_alphabet(alphabet), per_image_lexicon=per_image_lexicon,
                      max_distance=max_distance, drop_last=drop_last, out=out, progress=progress)
    results, total = [], EvalResult("total")
    try:
        if out is not None:
            out.open()
        for dataset, name in zip(datasets, _display_names(paths)):
            result = run.dataset(dataset, name)
            results.append(result)
            total.add(result)
        if out is not None:
            out.commit()
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

def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_input(path, given):
    """Whether writing ``path`` would write over or into the input ``given`` (links followed)."""
    if os.path.isdir(given):
        return _inside(path, given)
    if os.path.realpath(path) == os.path.realpath(given):
        return True
    try:
        return os.path.samefile(path, given)  # a hard link
    except (OSError, ValueError):
        return False


def check_predictions_path(path, overwrite=False, inputs=()):
    """Refuse a predictions file that writing could lose data by (one line saying what to do);
    returns it as a Path. ``inputs``: files and folders it must not be, nor lie inside."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"predictions must be a file path, not {type(path).__name__}")
    text = os.fspath(path)
    if not text or "\0" in text:
        raise CnnctcError(f"{text!r}: not a valid file name for the predictions")
    path = Path(text)
    for given in inputs:
        if given is not None and _is_input(path, given):
            inside = os.path.isdir(given) and os.path.realpath(path) != os.path.realpath(given)
            where = "lies inside" if inside else "is"
            raise CnnctcError(f"{path} {where} the input {given}; refusing to write there, choose another "
                              "predictions file")
    if os.path.lexists(path):
        if path.is_symlink():
            raise CnnctcError(f"{path} is a symbolic link; not replaced (remove it or choose another predictions "
                              "file)")
        if path.is_dir():
            raise CnnctcError(f"{path} is a folder; name the predictions file to write")
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CnnctcError(f"{path} is not a regular file; choose another predictions file")
        if not overwrite:
            raise CnnctcError(f"{path} already exists (choose another predictions file, or replace it with "
                              "--overwrite)")
        if not _written_by_eval(path):
            raise CnnctcError(f"{path} is not a predictions file written by eval; --overwrite replaces only "
                              "those (choose another predictions file)")
    parent = path.parent
    if not parent.is_dir():
        raise CnnctcError(f"{path}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CnnctcError(f"{path}: permission denied (cannot write in {parent})")
    return path


def _written_by_eval(path):
    """Whether ``path`` is empty or starts like a predictions file (a JSON line naming a dataset and an index)."""
    import json
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 16)
    except OSError:
        return False
    if not first.strip():
        return os.path.getsize(path) == 0
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and {"dataset", "index", "label"} <= row.keys()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process, or not a pid we can ask about: leave its file alone
    return True


class _PredictionsFile:
    """JSON lines written to a hidden temporary file beside the target, moved into place at the end:
    without ``overwrite`` by a hard link, which fails rather than replace a file that appeared
    meanwhile. Temporary files of runs that died (kill -9) are removed by the next run."""

    def __init__(self, path, overwrite, inputs):
        self.path = check_predictions_path(path, overwrite, inputs)
        self.inputs = inputs
        self.overwrite = overwrite
        self._tmp = self._file = None

    def _error(self, exc, doing="writing"):
        if getattr(exc, "errno", None) == errno.ENOSPC:
            return CnnctcError(f"{self.path}: the disk is full ({doing} the predictions); free some space or "
                               "choose another predictions file")
        return CnnctcError(f"{self.path}: {doing} the predictions failed ({exc.strerror or exc})")

    def _remove_dead_temporaries(self):
        folder, prefix = self.path.parent, f".{self.path.name}."
        with contextlib.suppress(OSError):
            for entry in os.listdir(folder):
                pid = entry[len(prefix):-len(".tmp")].split(".")[0] if entry.startswith(prefix) else ""
                if entry.endswith(".tmp") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(folder / entry)

    def open(self):
        self._remove_dead_temporaries()
        self._tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode from the umask
        except OSError as exc:
            self._tmp = None
            raise self._error(exc, "creating") from None
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, record):
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise self._error(exc) from None

    def commit(self):
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            raise self._error(exc) from None
        finally:
            self._file = None
        if self.overwrite:
            check_predictions_path(self.path, True, self.inputs)  # a folder or link may have appeared
            try:
                os.replace(self._tmp, self.path)
            except OSError as exc:
                raise self._error(exc, "moving into place") from None
        else:
            try:
                os.link(self._tmp, self.path)  # never replaces: fails if the file appeared meanwhile
            except FileExistsError:
                raise CnnctcError(f"{self.path} appeared while evaluating; not replaced (choose another "
                                  "predictions file, or replace it with --overwrite)") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                    raise self._error(exc, "moving into place") from None
                if os.path.lexists(self.path):  # no hard links here: a plain check, then a rename
                    raise CnnctcError(f"{self.path} appeared while evaluating; not replaced") from None
                os.rename(self._tmp, self.path)
                self._tmp = None
                return
            os.unlink(self._tmp)
        self._tmp = None

    def discard(self):
        """Remove what an unfinished run wrote (nothing after commit)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None
