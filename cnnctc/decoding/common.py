"""What every decoder shares: the Prediction, the errors, argument checks and checked log-softmax."""
import dataclasses
import functools
import numbers

import numpy as np

from ..alphabet import alphabet_problem
from ..errors import CnnctcError, shown

from .._checks import MAX_BEAM_WIDTH, MAX_TOP_K, MAX_WORD_LENGTH  # noqa: F401 (the decoders' bounds)


class DecoderError(CnnctcError, ValueError):
    """A decoder was asked for with invalid arguments, or given logits it cannot read."""


class LexiconError(CnnctcError):
    """A lexicon file or word list cannot be used."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A recognised word: its text, a confidence in [0, 1], and per character (char, probability).

    ``greedy`` is the unconstrained greedy reading when a lexicon chose ``text``;
    ``alternatives`` holds the runner-up readings as (text, probability) pairs, best first.
    """
    text: str
    confidence: float
    chars: tuple = ()
    greedy: str = None
    alternatives: tuple = ()


def is_integer(value):
    """True for Python and numpy integers, False for bools (which are ints to Python)."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_count(name, value, smallest=1, largest=None, why=""):
    """``value`` as an int, or DecoderError naming ``name`` and the allowed range."""
    if not is_integer(value) or value < smallest:
        kind = "a positive" if smallest == 1 else "a non-negative"
        raise DecoderError(f"{name} must be {kind} integer, got {shown(value)}")
    if largest is not None and value > largest:
        raise DecoderError(f"{name} must be at most {largest}{why}, got {value}")
    return int(value)


@functools.lru_cache(maxsize=32)
def _problem(alphabet):
    return alphabet_problem(alphabet)


def check_alphabet(alphabet):
    """``alphabet`` after the package's one alphabet check (:mod:`cnnctc.alphabet`): a DecoderError
    naming the problem (empty, a repeated symbol, a tab or other control character), a TypeError for
    a value that is not a string. A repeated symbol would make two classes read alike, and a word
    with it score as one of them only."""
    if not isinstance(alphabet, str):
        raise TypeError(f"alphabet must be a string of symbols, got {type(alphabet).__name__}")
    problem = _problem(alphabet)
    if problem is not None:
        raise DecoderError(f"alphabet {problem}")
    return alphabet


def symbol_index(alphabet):
    return {symbol: code for code, symbol in enumerate(alphabet)}


def check_logits(logits, alphabet):
    """(B, T, C) logits as float64 after checking the shape and that every value is finite."""
    check_alphabet(alphabet)
    try:
        logits = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"logits must be a (B, T, {len(alphabet) + 1}) array of numbers") from None
    if logits.ndim != 3 or logits.shape[2] != len(alphabet) + 1:
        raise DecoderError(f"expected logits of shape (B, T, {len(alphabet) + 1}), got {logits.shape}")
    if not np.isfinite(logits).all():
        raise DecoderError("the network's outputs contain NaN or infinity: the checkpoint or the input is broken")
    return logits


def log_softmax(logits, alphabet):
    """(B, T, C) logits -> float64 log-probabilities, after check_logits."""
    logits = check_logits(logits, alphabet)
    if logits.shape[1] == 0:
        return logits
    top = logits.max(axis=2, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=2, keepdims=True))


def softmax(logits, axis=-1):
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def encode(words, index):
    """Words (all symbols in ``index``) as flat codes: (codes int32, offsets (N+1,) int64)."""
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    codes = np.fromiter((index[ch] for ch in "".join(words)), dtype=np.int32, count=int(offsets[-1]))
    return codes, offsets
