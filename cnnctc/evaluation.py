"""Word accuracy and normalized edit distance on LMDB datasets, measured as the field does."""
import dataclasses
import os

import numpy as np

from .data import LabelFilter, LmdbDataset
from .transforms import ImageError

__all__ = ["evaluate", "EvalResult", "edit_distance", "format_table"]


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


def evaluate(recognizer, paths, *, max_length=None, progress=None):
    """Evaluate a :class:`~cnnctc.recognizer.Recognizer` on LMDBs; returns (per-dataset results, total).

    Labels are filtered as in SPEC section 3 (lower-cased for a case-free alphabet, at most
    ``max_length`` characters, only alphabet symbols); unreadable images count as skipped.
    """
    alphabet = recognizer.alphabet
    label_filter = LabelFilter.for_alphabet(alphabet, max_length or recognizer.manifest.max_label_length)
    results, total = [], EvalResult("total")
    for path in paths:
        dataset = LmdbDataset(path, label_filter, preprocess_config=recognizer.manifest.preprocess)
        result = EvalResult(os.path.basename(os.path.normpath(path)), skipped=sum(dataset.skipped.values()))
        try:
            for start in range(0, len(dataset), recognizer.batch_size):
                images, labels = [], []
                for index in range(start, min(start + recognizer.batch_size, len(dataset))):
                    try:
                        image, label = dataset.load(index)
                    except ImageError:
                        result.skipped += 1
                        continue
                    images.append(image)
                    labels.append(label)
                if images:
                    predictions = recognizer.read_batch(np.stack(images))
                    for prediction, label in zip(predictions, labels):
                        _score(result, prediction.text, label)
                if progress:
                    progress(len(images))
        finally:
            dataset.close()
        results.append(result)
        total.add(result)
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
