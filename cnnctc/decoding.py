"""Greedy CTC decoding with confidences. The blank is the last class (MindSpore's CTCLoss convention)."""
import dataclasses

import numpy as np

__all__ = ["Prediction", "ctc_greedy_decode", "softmax"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A recognised word: its text, a confidence in [0, 1], and per character (char, probability)."""
    text: str
    confidence: float
    chars: tuple = ()


def softmax(logits, axis=-1):
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def ctc_greedy_decode(logits, alphabet, *, with_chars=False):
    """Decode (B, T, C) logits: argmax per column, merge repeats, drop blanks (class len(alphabet)).

    The confidence is the product of the kept columns' maximum softmax probabilities (the
    columns that emit a character); an empty prediction has confidence 0.
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3 or logits.shape[2] != len(alphabet) + 1:
        raise ValueError(f"expected logits of shape (B, T, {len(alphabet) + 1}), got {logits.shape}")
    blank = len(alphabet)
    probs = softmax(logits.astype(np.float64))
    best = probs.argmax(axis=2)
    best_prob = probs.max(axis=2)
    previous = np.concatenate([np.full((best.shape[0], 1), -1), best[:, :-1]], axis=1)
    keep = (best != blank) & (best != previous)
    results = []
    for row in range(best.shape[0]):
        columns = np.flatnonzero(keep[row])
        text = "".join(alphabet[k] for k in best[row, columns])
        confidence = float(np.prod(best_prob[row, columns])) if columns.size else 0.0
        chars = tuple((alphabet[k], float(p)) for k, p in zip(best[row, columns], best_prob[row, columns])) \
            if with_chars else ()
        results.append(Prediction(text, confidence, chars))
    return results
