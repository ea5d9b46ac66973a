"""Greedy CTC decoding: the best class per column, repeats merged, blanks dropped."""
import numpy as np

from .common import Prediction, check_logits, softmax


def ctc_greedy_decode(logits, alphabet, *, with_chars=False):
    """Decode (B, T, C) logits: argmax per column, merge repeats, drop blanks (class len(alphabet)).

    The confidence is the product of the kept columns' maximum softmax probabilities (the
    columns that emit a character); an empty prediction has confidence 0. NaN or infinite
    logits raise DecoderError.
    """
    logits = check_logits(logits, alphabet)
    blank = len(alphabet)
    probs = softmax(logits)
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
