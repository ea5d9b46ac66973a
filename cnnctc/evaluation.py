"""Word accuracy and normalized edit distance on LMDB datasets, measured as the field does."""
import dataclasses
import logging
import os

import numpy as np

from .data import LabelFilter, LmdbDataset
from .decoding import ctc_lexicon_decode
from .transforms import ImageError

__all__ = ["evaluate", "EvalResult", "edit_distance", "format_table"]

log = logging.getLogger(__name__)


def edit_distance(a, b):
    """Levenshtein distance."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


@dataclasses.dataclass
class EvalResult:
    name: str
    kept: int = 0
    skipped: int = 0
    correct: int = 0
    ned_sum: float = 0.0   # sum over samples of 1 - ED / max(len(gt), len(pred)) (ICDAR 2019)

    @property
    def accuracy(self):
        """Word accuracy in percent."""
        return 100.0 * self.correct / self.kept if self.kept else 0.0

    @property
    def norm_ed(self):
        """Mean of 1 - normalized edit distance, in [0, 1] (higher is better)."""
        return self.ned_sum / self.kept if self.kept else 0.0

    def add(self, other):
        self.kept += other.kept
        self.skipped += other.skipped
        self.correct += other.correct
        self.ned_sum += other.ned_sum

    def as_dict(self):
        return {"dataset": self.name, "kept": self.kept, "skipped": self.skipped, "correct": self.correct,
                "accuracy": round(self.accuracy, 4), "norm_ed": round(self.norm_ed, 6)}


def _score(result, predicted, truth):
    result.kept += 1
    result.correct += predicted == truth
    longest = max(len(truth), len(predicted))
    result.ned_sum += 1.0 - (edit_distance(predicted, truth) / longest if longest else 0.0)


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


def _per_image_lexicon(words, alphabet):
    """``words`` folded like the labels and kept when readable with ``alphabet``; (kept, dropped)."""
    if alphabet == alphabet.lower():
        words = [w.lower() for w in words]
    kept = [w for w in dict.fromkeys(words) if all(c in alphabet for c in w)]
    return kept, len(words) - len(kept)


def evaluate(recognizer, paths, *, max_length=None, progress=None, per_image_lexicon=False, max_distance=None):
    """Evaluate a :class:`~cnnctc.recognizer.Recognizer` on LMDBs; returns (per-dataset results, total).

    Labels are filtered as in SPEC section 3 (lower-cased for a case-free alphabet, at most
    ``max_length`` characters, only alphabet symbols); unreadable images count as skipped.
    Predictions come from the recognizer's decoder; with ``per_image_lexicon`` a sample that
    carries a lexicon (LMDB key ``lexicon-%09d``) is read as the lexicon word with the highest
    CTC probability (within ``max_distance`` edits of the greedy reading, if given).
    """
    alphabet = recognizer.alphabet
    label_filter = LabelFilter.for_alphabet(alphabet, max_length or recognizer.manifest.max_label_length)
    datasets = _open_all([paths] if isinstance(paths, (str, os.PathLike)) else list(paths), label_filter,
                         recognizer.manifest.preprocess)
    results, total = [], EvalResult("total")
    dropped_words = 0
    try:
        for dataset in datasets:
            result = EvalResult(os.path.basename(os.path.normpath(dataset.paths[0])),
                                skipped=sum(dataset.skipped.values()))
            for start in range(0, len(dataset), recognizer.batch_size):
                images, labels, lexicons = [], [], []
                for index in range(start, min(start + recognizer.batch_size, len(dataset))):
                    try:
                        image, label = dataset.load(index)
                    except ImageError:
                        result.skipped += 1
                        continue
                    images.append(image)
                    labels.append(label)
                    lexicons.append(dataset.lexicon(index) if per_image_lexicon else None)
                if images:
                    logits = recognizer.logits(np.stack(images))
                    predictions = recognizer.decode(logits, alphabet)
                    for i, words in enumerate(lexicons):
                        if words:
                            kept, dropped = _per_image_lexicon(words, alphabet)
                            dropped_words += dropped
                            if kept:
                                predictions[i] = ctc_lexicon_decode(logits[i:i + 1], alphabet, kept,
                                                                    max_distance=max_distance)[0]
                    for prediction, label in zip(predictions, labels):
                        _score(result, prediction.text, label)
                if progress:
                    progress(len(images))
            results.append(result)
            total.add(result)
    finally:
        for dataset in datasets:
            dataset.close()
    if dropped_words:
        log.warning("%d per-image lexicon words hold symbols outside the alphabet and were left out", dropped_words)
    return results, total


def format_table(results, total):
    """A plain-text table like the paper's: one row per dataset and a total."""
    rows = [("dataset", "kept", "skipped", "accuracy %", "1-N.E.D.")]
    rows += [(r.name, str(r.kept), str(r.skipped), f"{r.accuracy:.2f}", f"{r.norm_ed:.4f}")
             for r in [*results, total]]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
