"""CTC decoding with confidences: greedy, prefix beam search, and lexicon-constrained.

The blank is the last class (MindSpore's CTCLoss convention). Pure numpy.

- :func:`ctc_greedy_decode`: argmax per column, merge repeats, drop blanks (the default).
- :func:`ctc_beam_decode`: CTC prefix beam search; confidences are sequence probabilities,
  summed over all alignments of a reading.
- :func:`ctc_lexicon_decode`: the word of a lexicon with the highest exact CTC probability
  (forward algorithm), optionally among the words within an edit distance of the greedy reading.
- :func:`make_decoder`: the decoder as one parameter, ``decode(logits, alphabet, with_chars=...)``.

Sequence probabilities come from the forward algorithm, run for many words at once (one numpy
operation per column over all their states). Each word's states are rescaled every column and
the scale is kept as a logarithm, so a probability is log(rescaled sum) + accumulated log
scale; a word whose states fall below 1e-300 of their maximum, where float64 could lose
precision, is recomputed element by element in log space. Either way the result is exact to
rounding, whatever the logits' range.
"""
import dataclasses
import logging
import math
import os
import stat

import numpy as np

from .errors import CnnctcError

__all__ = ["Prediction", "ctc_greedy_decode", "softmax", "ctc_beam_decode", "ctc_lexicon_decode",
           "ctc_log_probability", "Lexicon", "read_lexicon", "make_decoder", "Decoder", "DecoderError",
           "LexiconError", "DECODERS"]

logger = logging.getLogger(__name__)

DECODERS = ("greedy", "beam")


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


# ---------------------------------------------------------------------------------------------
# Shared helpers

def _log_softmax(logits, alphabet):
    """(B, T, C) logits -> float64 log-probabilities, after checking shape and values."""
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[2] != len(alphabet) + 1:
        raise ValueError(f"expected logits of shape (B, T, {len(alphabet) + 1}), got {logits.shape}")
    logits = logits.astype(np.float64)
    if logits.shape[1] == 0:
        return logits
    top = logits.max(axis=2, keepdims=True)
    if np.isnan(logits).any() or not np.isfinite(top).all():
        raise DecoderError("the network's outputs contain NaN or infinity: the checkpoint or the input is broken")
    with np.errstate(divide="ignore"):
        return logits - top - np.log(np.exp(logits - top).sum(axis=2, keepdims=True))


def _with_empty_class(array, value):
    """Append one class of constant ``value`` (the target of padded label positions)."""
    pad = np.full(array.shape[:-1] + (1,), value, dtype=array.dtype)
    return np.concatenate([array, pad], axis=-1)


def _label_tables(codes, lengths, pad_class):
    """Extended label sequences (blank, l1, blank, l2, ..., blank) of a padded code matrix.

    Returns ext (R, S) class per state (``pad_class`` past a row's end), skip (R, S) where a state
    may be entered from two states back (a label unlike the previous one), and earliest (R, S),
    the first column at which each state can be reached (a large number past a row's end).
    """
    rows, width = codes.shape
    blank = pad_class - 1
    states = 2 * width + 1
    ext = np.full((rows, states), blank, dtype=np.int64)
    ext[:, 1::2] = codes
    skip = np.zeros((rows, states), dtype=bool)
    if width > 1:
        skip[:, 3::2] = codes[:, 1:] != codes[:, :-1]
    repeats = np.zeros((rows, width), dtype=np.int64)
    if width > 1:
        repeats[:, 1:] = np.cumsum(codes[:, 1:] == codes[:, :-1], axis=1)
    label_first = np.arange(width) + repeats                # first column of label k
    earliest = np.zeros((rows, states), dtype=np.int64)
    earliest[:, 1::2] = label_first
    earliest[:, 2::2] = label_first + 1
    beyond = np.arange(states)[None, :] > 2 * lengths[:, None]
    ext[beyond] = pad_class
    skip[beyond] = False
    earliest[beyond] = np.iinfo(np.int32).max
    return ext, skip, earliest


def _encode(words, index):
    """Symbol codes of words (all symbols in ``index``), padded with -1: (codes, lengths)."""
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    codes = np.full((len(words), int(lengths.max()) if len(words) else 0), -1, dtype=np.int64)
    codes[np.arange(codes.shape[1]) < lengths[:, None]] = [index[ch] for ch in "".join(words)]
    return codes, lengths


_TINY = 1e-300  # below this a float64 product may have left the normal range: recompute in log space


def _emissions(table, rows_image, t, ext_t):
    """Emission probabilities (S, R) of column t: ``table`` is (I, T, C+1); ext_t is (S, R)."""
    if rows_image is None:
        return table[0, t].take(ext_t)
    return table[rows_image[None, :], t, ext_t]


def _forward_linear(probs, rows_image, ext, skip, earliest, lengths):
    """CTC forward algorithm, rescaled per row and column: (log P (R,), exact (R,) bool).

    ``probs`` is (I, T, C+1) linear emission probabilities whose last class is 0 (the target of
    padded states); row r reads image ``rows_image[r]`` (None: all read image 0). States are
    laid out (S, R) so that every step is a few whole-array operations. A row is flagged
    inexact when a reachable state fell below _TINY, where float64 could have lost precision;
    _forward_log gives its exact value.
    """
    rows, states = ext.shape
    ext_t = np.ascontiguousarray(ext.T)
    skip_t = np.ascontiguousarray(skip.T).astype(np.float64)
    reach = np.ascontiguousarray(np.minimum(earliest, 127).T).astype(np.int8)
    buf = np.zeros((states + 2, rows))               # two zero rows in front: states s-1 and s-2
    cur = buf[2:]
    cur[:2] = _emissions(probs, rows_image, 0, ext_t[:2])
    flags = (cur < _TINY) & (reach <= 0)
    log_scale = np.zeros(rows)
    new, tmp = np.empty((states, rows)), np.empty((states, rows))
    low, reached = np.empty((states, rows), bool), np.empty((states, rows), bool)
    for t in range(1, probs.shape[1]):
        np.add(cur, buf[1:-1], out=new)
        np.multiply(buf[:-2], skip_t, out=tmp)
        new += tmp
        new *= _emissions(probs, rows_image, t, ext_t)
        np.less(new, _TINY, out=low)
        np.less_equal(reach, t, out=reached)
        low &= reached
        flags |= low
        top = new.max(axis=0)
        top[top <= 0] = 1.0
        np.divide(new, top, out=cur)
        log_scale += np.log(top)
    end, columns = 2 * lengths, np.arange(rows)
    last = cur[end, columns] + np.where(lengths > 0, cur[np.maximum(end - 1, 0), columns], 0.0)
    with np.errstate(divide="ignore"):
        return np.log(last) + log_scale, ~flags.any(axis=0)


def _forward_log(log_probs, rows_image, ext, skip, lengths):
    """CTC forward algorithm in log space, element by element (exact at any dynamic range)."""
    rows, states = ext.shape
    ext_t = np.ascontiguousarray(ext.T)
    skip_add = np.where(skip.T, 0.0, -np.inf)
    buf = np.full((states + 2, rows), -np.inf)
    cur = buf[2:]
    cur[:2] = _emissions(log_probs, rows_image, 0, ext_t[:2])
    for t in range(1, log_probs.shape[1]):
        new = np.logaddexp(cur, buf[1:-1])
        new = np.logaddexp(new, buf[:-2] + skip_add)
        new += _emissions(log_probs, rows_image, t, ext_t)
        cur[...] = new
    end, columns = 2 * lengths, np.arange(rows)
    return np.logaddexp(cur[end, columns], np.where(lengths > 0, cur[np.maximum(end - 1, 0), columns], -np.inf))


def _sequence_log_probs(log_probs, probs, rows_image, codes, lengths):
    """Exact log P(sequence | image) for rows of padded codes; ``rows_image`` as in _forward_linear."""
    if not len(codes):
        return np.zeros(0)
    columns, pad_class = log_probs.shape[1], log_probs.shape[2] - 1
    if columns == 0:
        return np.where(lengths == 0, 0.0, -np.inf)
    ext, skip, earliest = _label_tables(codes, lengths, pad_class)
    result, exact = _forward_linear(probs, rows_image, ext, skip, earliest, lengths)
    if not exact.all():
        redo = np.flatnonzero(~exact)
        result[redo] = _forward_log(log_probs, None if rows_image is None else rows_image[redo], ext[redo],
                                    skip[redo], lengths[redo])
    return result


def _viterbi_chars(log_probs, codes, alphabet):
    """(symbol, probability) per label along the most probable alignment of ``codes``.

    A label's probability is its class probability in the first column that emits it.
    """
    length = len(codes)
    if length == 0:
        return ()
    blank = len(alphabet)
    codes_arr = np.asarray(codes)[None, :]
    ext, skip, _ = _label_tables(codes_arr, np.array([length]), blank + 1)
    ext, skip = ext[0], skip[0]
    columns, states = log_probs.shape[0], ext.size
    delta = np.full(states + 2, -np.inf)
    delta[2:4] = log_probs[0, ext[:2]]
    back = np.zeros((columns, states), dtype=np.int64)
    skip_add = np.where(skip, 0.0, -np.inf)
    for t in range(1, columns):
        options = np.stack([delta[2:], delta[1:-1], delta[:-2] + skip_add])
        back[t] = options.argmax(axis=0)
        delta[2:] = options.max(axis=0) + log_probs[t, ext]
    state = states - 1 if delta[2 + states - 1] >= delta[2 + states - 2] else states - 2
    path = np.empty(columns, dtype=np.int64)
    for t in range(columns - 1, -1, -1):
        path[t] = state
        state -= back[t, state]
    chars = []
    for k, code in enumerate(codes):
        t = int(np.flatnonzero(path == 2 * k + 1)[0])
        chars.append((alphabet[code], float(np.exp(log_probs[t, code]))))
    return tuple(chars)


def _symbol_index(alphabet):
    return {symbol: code for code, symbol in enumerate(alphabet)}


def ctc_log_probability(logits, alphabet, words):
    """Exact log P(word | image) under CTC for every image and word: a (B, N) float64 array.

    The sum over all alignments (forward algorithm); -inf for a word too long for the columns.
    Words are taken as they are (no case folding); a symbol outside the alphabet is an error.
    """
    log_probs = _log_softmax(logits, alphabet)
    index = _symbol_index(alphabet)
    words = list(words)
    for word in words:
        if any(ch not in index for ch in word):
            raise DecoderError(f"{word!r} has symbols outside the alphabet {alphabet!r}")
    batch = log_probs.shape[0]
    out = np.empty((batch, len(words)))
    if not words or not batch:
        return out
    codes, lengths = _encode(words, index)
    padded_log = _with_empty_class(log_probs, -np.inf)
    padded = np.exp(padded_log)
    for b in range(batch):
        out[b] = _sequence_log_probs(padded_log[b:b + 1], padded[b:b + 1], None, codes, lengths)
    return out


# ---------------------------------------------------------------------------------------------
# Beam search

def _check_count(name, value, smallest=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < smallest:
        kind = "a positive" if smallest == 1 else "a non-negative"
        raise DecoderError(f"{name} must be {kind} integer, got {value!r}")


def _check_beam_arguments(beam_width, top_k):
    _check_count("beam_width", beam_width)
    _check_count("top_k", top_k)
    if top_k > beam_width:
        raise DecoderError(f"top_k ({top_k}) cannot exceed beam_width ({beam_width}): the beam keeps only "
                           f"{beam_width} readings")


def _beam_search(log_probs, width):
    """Prefix beam search over (B, T, C) log-probabilities.

    Returns per image a list of (code tuple, log probability), best first. Extensions of every
    beam by every symbol are scored at once in numpy; only the ``width`` best survive a column.
    An extension that is already a beam is merged into it, so no probability mass is counted
    twice or lost while the beam holds every prefix.
    """
    batch, columns, classes = log_probs.shape
    symbols, blank, K = classes - 1, classes - 1, width
    neg = -np.inf
    p_blank = np.full((batch, K), neg)          # log P(prefix, ending in a blank)
    p_label = np.full((batch, K), neg)          # log P(prefix, ending in its last symbol)
    p_blank[:, 0] = 0.0
    last = np.full((batch, K), blank)           # last symbol of each prefix (blank: empty prefix)
    prefixes = [[()] + [None] * (K - 1) for _ in range(batch)]
    rows = np.arange(batch)[:, None]
    for t in range(columns):
        lp = log_probs[:, t, :]
        total = np.logaddexp(p_blank, p_label)
        stay_blank = total + lp[:, blank:blank + 1]
        stay_label = p_label + np.take_along_axis(lp, last, axis=1)
        extend = total[:, :, None] + lp[:, None, :symbols]                  # (B, K, symbols)
        b_rep, k_rep = np.nonzero(last < blank)
        c_rep = last[b_rep, k_rep]
        # A repeated symbol only starts a new character after a blank.
        extend[b_rep, k_rep, c_rep] = p_blank[b_rep, k_rep] + lp[b_rep, c_rep]
        merges = []
        for b in range(batch):
            slots = {prefix: j for j, prefix in enumerate(prefixes[b]) if prefix is not None}
            for prefix, j in slots.items():
                if prefix:
                    parent = slots.get(prefix[:-1])
                    if parent is not None:
                        merges.append((b, j, parent, prefix[-1]))
        if merges:
            mb, mj, mk, mc = np.array(merges).T
            stay_label[mb, mj] = np.logaddexp(stay_label[mb, mj], extend[mb, mk, mc])
            extend[mb, mk, mc] = neg
        candidates = np.concatenate([np.logaddexp(stay_blank, stay_label), extend.reshape(batch, K * symbols)], axis=1)
        if candidates.shape[1] > K:
            chosen = np.argpartition(-candidates, K - 1, axis=1)[:, :K]
        else:
            chosen = np.broadcast_to(np.arange(K), (batch, K))
        scores = np.take_along_axis(candidates, chosen, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        chosen = np.take_along_axis(chosen, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        is_old = chosen < K
        old = np.where(is_old, chosen, 0)
        flat = np.where(is_old, 0, chosen - K)
        parent, symbol = flat // symbols, flat % symbols
        alive = np.isfinite(scores)
        p_blank = np.where(is_old & alive, stay_blank[rows, old], neg)
        p_label = np.where(alive, np.where(is_old, stay_label[rows, old], extend.reshape(batch, -1)[rows, flat]), neg)
        last = np.where(alive, np.where(is_old, last[rows, old], symbol), blank)
        new_prefixes = []
        for b in range(batch):
            kept = []
            for j in range(K):
                if not alive[b, j]:
                    kept.append(None)
                elif is_old[b, j]:
                    kept.append(prefixes[b][old[b, j]])
                else:
                    kept.append(prefixes[b][parent[b, j]] + (int(symbol[b, j]),))
            new_prefixes.append(kept)
        prefixes = new_prefixes
    final = np.logaddexp(p_blank, p_label)
    results = []
    for b in range(batch):
        ranked = [(prefixes[b][j], float(final[b, j])) for j in np.argsort(-final[b], kind="stable")
                  if prefixes[b][j] is not None and np.isfinite(final[b, j])]
        results.append(ranked)
    return results


def ctc_beam_decode(logits, alphabet, *, beam_width=10, top_k=1, with_chars=False):
    """CTC prefix beam search on (B, T, C) logits (blank = class len(alphabet)).

    Returns for each image a list of at most ``top_k`` Predictions, best first. Each
    ``confidence`` is the reading's exact probability, the sum over all its alignments: the
    readings the beam found, and the greedy reading, are scored with the forward algorithm. So
    the best reading is never less probable than greedy's, and with a beam wide enough to hold
    every prefix the ranking is exact. An empty reading has the probability that every column
    is blank.
    """
    _check_beam_arguments(beam_width, top_k)
    log_probs = _log_softmax(logits, alphabet)
    if not log_probs.shape[0]:
        return []
    beams = _beam_search(log_probs, int(beam_width))
    index = _symbol_index(alphabet)
    candidates = []
    for b, prediction in enumerate(ctc_greedy_decode(logits, alphabet)):
        found = [prefix for prefix, _ in beams[b]]
        greedy = tuple(index[ch] for ch in prediction.text)
        candidates.append(found if greedy in found else found + [greedy])
    rows_image = np.concatenate([np.full(len(found), b) for b, found in enumerate(candidates)])
    sequences = [prefix for found in candidates for prefix in found]
    lengths = np.array([len(prefix) for prefix in sequences], dtype=np.int64)
    codes = np.full((len(sequences), max(int(lengths.max()), 1)), -1, dtype=np.int64)
    for row, prefix in enumerate(sequences):
        codes[row, :len(prefix)] = prefix
    padded_log = _with_empty_class(log_probs, -np.inf)
    scores = _sequence_log_probs(padded_log, np.exp(padded_log), rows_image, codes[:, :int(lengths.max())], lengths)
    results, start = [], 0
    for b, found in enumerate(candidates):
        values = scores[start:start + len(found)]
        start += len(found)
        predictions = []
        for i in np.argsort(-values, kind="stable")[:top_k]:
            prefix = found[i]
            chars = _viterbi_chars(log_probs[b], prefix, alphabet) if with_chars else ()
            predictions.append(Prediction("".join(alphabet[c] for c in prefix), float(np.exp(values[i])), chars))
        results.append(predictions)
    return results


# ---------------------------------------------------------------------------------------------
# Lexicon

def read_lexicon(path):
    """Words from a UTF-8 file, one per line: blank lines skipped, surrounding whitespace stripped.

    Raises LexiconError (one line) for a missing, unreadable, non-regular, non-UTF-8 or empty file.
    """
    path = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise LexiconError(f"lexicon file not found: {path}") from None
    except PermissionError:
        raise LexiconError(f"cannot read lexicon file {path}: permission denied") from None
    except OSError as exc:
        raise LexiconError(f"cannot read lexicon file {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise LexiconError(f"lexicon {path} is {kind}: give a text file with one word per line")
        with os.fdopen(fd, "rb") as handle:
            fd = None
            data = handle.read()
    except OSError as exc:
        raise LexiconError(f"cannot read lexicon file {path}: {exc.strerror or exc}") from None
    finally:
        if fd is not None:
            os.close(fd)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LexiconError(f"lexicon file {path} is not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}): "
                           "save it as UTF-8 text, one word per line") from None
    words = [line.strip() for line in text.split("\n")]
    words = [word for word in words if word]
    if not words:
        raise LexiconError(f"empty lexicon: {path} has no words (one word per line)")
    return words


class Lexicon:
    """A word list prepared once for an alphabet, for repeated :func:`ctc_lexicon_decode` calls.

    Words are stripped, lower-cased when the alphabet is case-free (equal to its own
    ``.lower()``), and deduplicated in first-seen order. Words with a symbol outside the
    alphabet are skipped and reported once, as a logging warning. An empty list, or one with
    no word the alphabet can write, raises LexiconError.
    """

    _DENSE_LIMIT = 1 << 23   # words x classes up to which symbol sets are kept as a dense matrix

    def __init__(self, words, alphabet):
        if isinstance(words, (str, bytes)):
            raise TypeError("Lexicon takes a list of words; read a file with read_lexicon(path)")
        self.alphabet = alphabet
        fold = alphabet == alphabet.lower()
        index = _symbol_index(alphabet)
        symbols = set(alphabet)
        seen, kept, outside = set(), [], []
        for word in words:
            word = str(word).strip()
            if fold:
                word = word.lower()
            if not word or word in seen:
                continue
            seen.add(word)
            (kept if symbols.issuperset(word) else outside).append(word)
        if not seen:
            raise LexiconError("empty lexicon: give at least one word")
        if outside:
            if not kept:
                raise LexiconError(f"none of the {len(outside)} lexicon words can be written with the alphabet "
                                   f"{alphabet!r} (e.g. {outside[0]!r}): check the lexicon and the model")
            logger.warning("skipping %d of %d lexicon words with symbols outside the alphabet (e.g. %r)",
                           len(outside), len(seen), outside[0])
        self.words = tuple(kept)
        self.skipped = len(outside)
        codes, lengths = _encode(kept, index)
        self._codes, self._lengths = codes, lengths
        same = (codes[:, 1:] == codes[:, :-1]) & (codes[:, 1:] >= 0)
        self._repeats = same.sum(axis=1).astype(np.int64)
        self._need = lengths + self._repeats              # columns a word needs at least
        self._counts = {}
        # (length, words), padded with the class past the blank: for per-word sums over symbols.
        self._padded_codes = np.ascontiguousarray(np.where(codes >= 0, codes, len(alphabet) + 1).T)
        pad = len(alphabet) + 1                           # the class past the blank: probability 0
        # (length, words): each word's distinct symbols, the repeats replaced by the padding class.
        distinct = np.sort(np.where(codes >= 0, codes, pad), axis=1)
        distinct[:, 1:][distinct[:, 1:] == distinct[:, :-1]] = pad
        self._distinct = np.ascontiguousarray(distinct.T)
        # (classes, words), 1 where a word uses a symbol: the per-column mass is a matrix product.
        self._members = None
        if len(kept) * (pad + 1) <= self._DENSE_LIMIT:
            self._members = np.zeros((pad + 1, len(kept)))
            self._members[distinct, np.arange(len(kept))[:, None]] = 1.0
            self._members[pad] = 0.0
        # The words ordered by length, codes transposed (length, words), for the edit-distance filter.
        self._by_length = np.argsort(lengths, kind="stable")
        self._length_starts = np.searchsorted(lengths[self._by_length], np.arange(int(lengths.max()) + 2))
        self._codes_by_length = np.ascontiguousarray(codes[self._by_length].T).astype(np.int32)

    def __len__(self):
        return len(self.words)

    def __iter__(self):
        return iter(self.words)

    def __repr__(self):
        return f"<Lexicon of {len(self.words)} words ({self.skipped} skipped)>"

    def within_distance(self, codes, max_distance):
        """Indices of the words within Levenshtein distance ``max_distance`` of a code sequence."""
        m = len(codes)
        low = max(m - max_distance, 0)
        high = min(m + max_distance, len(self._length_starts) - 2)
        if low > high:
            return np.zeros(0, dtype=np.int64)
        start, stop = self._length_starts[low], self._length_starts[high + 1]
        if start == stop:
            return np.zeros(0, dtype=np.int64)
        words = self._codes_by_length[:high, start:stop]
        dtype = np.int16 if m + high < 32000 else np.int64
        # Row j holds the distance between the query's first i symbols and the words' first j.
        row = np.repeat(np.arange(high + 1, dtype=dtype)[:, None], stop - start, axis=1)
        best = np.empty_like(row)
        for i, code in enumerate(codes, start=1):
            best[0] = i
            np.minimum(row[:-1] + (words != code), row[1:] + 1, out=best[1:])     # substitute, delete
            for j in range(1, high + 1):                                           # insert
                np.minimum(best[j], best[j - 1] + 1, out=best[j])
            row, best = best, row
        distance = row[self._lengths[self._by_length[start:stop]], np.arange(stop - start)]
        return np.sort(self._by_length[start:stop][distance <= max_distance])

    def _alignment_log_counts(self, columns):
        """log of the number of alignments of each word in ``columns`` columns (-inf: it does not fit).

        A word of L symbols with r adjacent repeats has C(T + L - r, 2L) alignments in T columns.
        """
        if columns not in self._counts:
            pairs, inverse = np.unique(np.stack([self._lengths, self._repeats], axis=1), axis=0, return_inverse=True)
            values = np.array([math.lgamma(columns + L - r + 1) - math.lgamma(2 * L + 1)
                               - math.lgamma(columns - L - r + 1) if L + r <= columns else -np.inf
                               for L, r in pairs.tolist()])
            self._counts[columns] = values[inverse.reshape(-1)]
        return self._counts[columns]

    def _log_bounds(self, log_probs, probs, candidates, *, per_column=True):
        """Upper bounds on log P(word) for one image ((1, T, C+1) arrays), each >= the exact value.

        With m_t(w) = blank_t + the word's symbols' probabilities in column t (the mass its
        alignments can use there):
        - every alignment uses only those classes and is not all blanks, so
          P <= prod_t m_t - prod_t blank_t;
        - with tau_1 < ... < tau_L the columns where the labels are first emitted,
          P <= prod_t m_t * sum over tau of prod_k p_tau_k(w_k) / m_tau_k, and
          p_t(c) / m_t <= rho_t(c) = p_t(c) / (p_t(c) + blank_t), so
          P <= prod_t m_t * min(1, prod_k sum_t rho_t(w_k)): each symbol must be emitted somewhere;
        - P <= (number of alignments) x prod_t (the column's top probability).
        ``per_column=False`` replaces prod_t m_t by (mean_t m_t)^T (AM-GM: no smaller, and
        T times cheaper). Products are taken in groups of 4 columns floored at 1e-300 and the
        difference floored at 1e-12 of the product, which only raise the bound.
        """
        columns = probs.shape[1]
        p = probs[0]
        blank = p[:, -2:-1]
        every = candidates.size == len(self.words)            # candidates are distinct: all words
        counts = self._alignment_log_counts(columns)
        count_bound = (counts if every else counts[candidates]) + log_probs[0, :, :-1].max(axis=1).sum()
        if not per_column:
            mass = self._symbol_mass(p.mean(axis=0, keepdims=True), candidates)[0] + blank.mean()
            with np.errstate(divide="ignore"):
                mass_bound = columns * np.log(np.minimum(mass, 1.0))
        else:
            mass = self._symbol_mass(p, candidates)
            mass += blank
            np.minimum(mass, 1.0, out=mass)
            groups = np.empty(((columns + 3) // 4, mass.shape[1]))
            for g, start in enumerate(range(0, columns, 4)):
                groups[g] = mass[start]
                for row in mass[start + 1:start + 4]:
                    groups[g] *= row
            np.maximum(groups, 1e-300, out=groups)
            mass_bound = np.log(groups).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_rho = np.log(np.where(p > 0, p / (p + blank), 0.0).sum(axis=0))
            log_rho[-2:] = 0.0                                # blank and the padding class
            codes = self._padded_codes if every else self._padded_codes[:, candidates]
            emitted = np.minimum(log_rho.take(codes).sum(axis=0), 0.0)
            not_blank = np.log1p(-np.minimum(np.exp(log_probs[0, :, -2].sum() - mass_bound), 1.0 - 1e-12))
        return np.minimum(count_bound, mass_bound + np.minimum(emitted, not_blank))

    def _symbol_mass(self, p, candidates):
        """(rows, words): the total probability of each candidate word's symbols, per row of p."""
        every = candidates.size == len(self.words)           # candidates are distinct: all words
        if len(p) == 1 or self._members is None:
            # Sums of gathered values: no BLAS threads for what is a small product.
            distinct = self._distinct if every else self._distinct[:, candidates]
            return np.stack([row.take(distinct).sum(axis=0) for row in p])
        return p @ (self._members if every else self._members[:, candidates])


def _check_lexicon(lexicon, alphabet):
    if isinstance(lexicon, Lexicon):
        if lexicon.alphabet != alphabet:
            raise DecoderError(f"the lexicon was prepared for the alphabet {lexicon.alphabet!r}, not {alphabet!r}")
        return lexicon
    return Lexicon(lexicon, alphabet)


_FIRST_CHUNK, _CHUNK, _GROUP = 32, 512, 1024


def _best_words(lexicon, log_probs, probs, candidates, top_k):
    """The ``top_k`` most probable candidate words of one image: [(word index, log P)], best first.

    ``log_probs``/``probs`` are (1, T, C+1). Candidates are scored exactly in order of an upper
    bound on their probability (Lexicon._log_bounds), in growing chunks; a word whose bound is
    below the k-th best probability found so far cannot enter the result and is skipped. The
    cheap bound ranks every candidate; the per-column one is computed for those the first
    chunk's scores leave in the running. Equal probabilities go to the earlier word, as a full
    evaluation would have it.
    """
    if not candidates.size:
        return []
    bound = lexicon._log_bounds(log_probs, probs, candidates, per_column=False)
    found_index, found_log = [], []
    threshold = -np.inf

    def evaluate(chosen):
        nonlocal threshold
        chosen = chosen[np.argsort(lexicon._lengths[chosen], kind="stable")]   # similar lengths pad little
        for start in range(0, chosen.size, _GROUP):
            group = chosen[start:start + _GROUP]
            lengths = lexicon._lengths[group]
            found_index.append(group)
            found_log.append(_sequence_log_probs(log_probs, probs, None, lexicon._codes[group, :int(lengths.max())],
                                                 lengths))
        values = np.concatenate(found_log)
        if values.size >= top_k:
            threshold = np.partition(values, values.size - top_k)[values.size - top_k]

    def still_possible(bounds):
        if not np.isfinite(threshold):
            return np.ones(bounds.size, dtype=bool)
        return bounds >= threshold - 1e-9 * (1.0 + abs(threshold))   # slack for rounding

    first = np.argpartition(-bound, _FIRST_CHUNK)[:_FIRST_CHUNK] if bound.size > _FIRST_CHUNK \
        else np.arange(bound.size)
    evaluate(candidates[first])
    rest = np.ones(candidates.size, dtype=bool)
    rest[first] = False
    candidates, bound = candidates[rest], bound[rest]
    keep = still_possible(bound)
    candidates, bound = candidates[keep], bound[keep]
    if candidates.size > _FIRST_CHUNK:
        bound = np.minimum(bound, lexicon._log_bounds(log_probs, probs, candidates))
        keep = still_possible(bound)
        candidates, bound = candidates[keep], bound[keep]
    order = np.argsort(-bound, kind="stable")
    candidates, bound = candidates[order], bound[order]
    chunk = _CHUNK
    while candidates.size:
        keep = still_possible(bound)
        candidates, bound = candidates[keep], bound[keep]
        evaluate(candidates[:chunk])
        candidates, bound = candidates[chunk:], bound[chunk:]
        chunk *= 2
    indices, values = np.concatenate(found_index), np.concatenate(found_log)
    ranked = np.lexsort((indices, -values))[:top_k]
    return [(int(indices[i]), float(values[i])) for i in ranked if np.isfinite(values[i])]


def ctc_lexicon_decode(logits, alphabet, lexicon, *, max_distance=None, top_k=1, with_chars=False):
    """For each image of (B, T, C) logits, the lexicon word with the highest CTC probability.

    ``lexicon`` is a list of words or a :class:`Lexicon` prepared for ``alphabet``. The
    probability is exact (forward algorithm, summed over all alignments). With
    ``max_distance``, only words within that edit distance of the greedy reading compete (the
    CRNN protocol). Returns one Prediction per image: text = the word, confidence = its
    probability, ``greedy`` = the unconstrained greedy reading, ``alternatives`` = the next
    ``top_k - 1`` words with their probabilities. When no word is a candidate (none within
    ``max_distance``, or none fits in the T columns), text is "" and confidence 0.
    """
    if max_distance is not None:
        _check_count("max_distance", max_distance, smallest=0)
    _check_count("top_k", top_k)
    log_probs = _log_softmax(logits, alphabet)
    lexicon = _check_lexicon(lexicon, alphabet)
    greedy = ctc_greedy_decode(logits, alphabet)
    index = _symbol_index(alphabet)
    columns = log_probs.shape[1]
    fits = np.flatnonzero(lexicon._need <= columns)
    results = []
    for b in range(log_probs.shape[0]):
        if max_distance is None:
            candidates = fits
        else:
            near = lexicon.within_distance([index[ch] for ch in greedy[b].text], int(max_distance))
            candidates = near[lexicon._need[near] <= columns]
        image_log = _with_empty_class(log_probs[b:b + 1], -np.inf)
        best = _best_words(lexicon, image_log, np.exp(image_log), candidates, int(top_k)) if columns else []
        if not best:
            results.append(Prediction("", 0.0, (), greedy=greedy[b].text))
            continue
        (word_index, log_p), rest = best[0], best[1:]
        word = lexicon.words[word_index]
        chars = _viterbi_chars(log_probs[b], [index[ch] for ch in word], alphabet) if with_chars else ()
        results.append(Prediction(word, float(np.exp(log_p)), chars, greedy=greedy[b].text,
                                  alternatives=tuple((lexicon.words[i], float(np.exp(v))) for i, v in rest)))
    return results


# ---------------------------------------------------------------------------------------------
# The decoder as one parameter

class Decoder:
    """``decode(logits, alphabet, *, with_chars=False) -> [Prediction]``, one best per image.

    Made by :func:`make_decoder`. Runner-up readings (beam or lexicon with ``top_k > 1``) are
    in each Prediction's ``alternatives``.
    """

    def __init__(self, name, beam_width, top_k, lexicon, max_distance):
        self.name, self.beam_width, self.top_k = name, beam_width, top_k
        self.lexicon, self.max_distance = lexicon, max_distance
        self._prepared = {}

    def __repr__(self):
        if self.name == "lexicon":
            return (f"Decoder('lexicon', words={len(self.lexicon)}, max_distance={self.max_distance}, "
                    f"top_k={self.top_k})")
        if self.name == "beam":
            return f"Decoder('beam', beam_width={self.beam_width}, top_k={self.top_k})"
        return "Decoder('greedy')"

    def prepared_lexicon(self, alphabet):
        """The lexicon prepared for ``alphabet`` (done once per alphabet)."""
        if isinstance(self.lexicon, Lexicon):
            return _check_lexicon(self.lexicon, alphabet)
        if alphabet not in self._prepared:
            self._prepared[alphabet] = Lexicon(self.lexicon, alphabet)
        return self._prepared[alphabet]

    def __call__(self, logits, alphabet, *, with_chars=False):
        if self.name == "lexicon":
            return ctc_lexicon_decode(logits, alphabet, self.prepared_lexicon(alphabet), max_distance=self.max_distance,
                                      top_k=self.top_k, with_chars=with_chars)
        if self.name == "beam":
            results = []
            for ranked in ctc_beam_decode(logits, alphabet, beam_width=self.beam_width, top_k=self.top_k,
                                          with_chars=with_chars):
                best, rest = ranked[0], ranked[1:]
                results.append(dataclasses.replace(best, alternatives=tuple((p.text, p.confidence) for p in rest)))
            return results
        return ctc_greedy_decode(logits, alphabet, with_chars=with_chars)


def make_decoder(name="greedy", *, beam_width=10, top_k=1, lexicon=None, max_distance=None):
    """A decoder callable ``decode(logits, alphabet, *, with_chars=False) -> [Prediction]``.

    ``name``: "greedy" or "beam" (prefix beam search of ``beam_width``). A ``lexicon`` (list of
    words or a prepared :class:`Lexicon`) makes it the lexicon decoder, optionally limited to
    words within ``max_distance`` edits of the greedy reading. ``top_k > 1`` (beam or lexicon)
    puts the runner-ups in ``Prediction.alternatives``. Invalid arguments raise DecoderError.
    """
    if name not in DECODERS:
        raise DecoderError(f"unknown decoder {name!r}: use one of {', '.join(DECODERS)}")
    _check_count("top_k", top_k)
    if max_distance is not None:
        if lexicon is None:
            raise DecoderError("max_distance needs a lexicon")
        _check_count("max_distance", max_distance, smallest=0)
    if lexicon is not None:
        if isinstance(lexicon, (str, bytes)):
            raise DecoderError("lexicon must be a list of words or a Lexicon; read a file with read_lexicon(path)")
        if not isinstance(lexicon, Lexicon):
            lexicon = tuple(lexicon)
            if not any(str(word).strip() for word in lexicon):
                raise LexiconError("empty lexicon: give at least one word")
        return Decoder("lexicon", None, int(top_k), lexicon, max_distance)
    if name == "beam":
        _check_beam_arguments(beam_width, top_k)
        return Decoder("beam", int(beam_width), int(top_k), None, None)
    if top_k != 1:
        raise DecoderError("top_k > 1 needs the beam decoder or a lexicon: greedy decoding has one reading")
    return Decoder("greedy", None, 1, None, None)
