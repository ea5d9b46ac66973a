"""The CTC forward algorithm over a prefix tree: exact sequence probabilities of many words and images.

The words are the nodes of a prefix tree (:class:`PrefixTree`), and the forward variables of a
prefix are computed once for every word that starts with it, level by level, for all the
(image, prefix) pairs a request needs at once. A prefix node has two states per column: its
last label emitted (L) and a blank after it (B). With IN_t the mass that can enter the node's
label at column t (the parent's S = L + B at t-1; only its B when the label repeats the parent's),

    L_t = (L_{t-1} + IN_t) e_t(label),    B_t = (B_{t-1} + L_{t-1}) e_t(blank),

and P(word) = L_{T-1} + B_{T-1} of its last node. Emissions are divided by each column's most
probable class (so every factor is at most 1 and the best path keeps value 1) and the log of
that scale is added back at the end. All terms are positive, so the result is exact to
rounding unless it left float64's normal range: a word whose scaled value is below
``Emissions.tiny`` is recomputed in log space (np.logaddexp), as is every word when the logits
have so many columns that scaled values could overflow (see _LINEAR_LIMIT). Either way the result
is exact, whatever the logits' range.

The probability that a reading starts with a prefix, sum_t IN_t e_t(label) times the columns
after t, bounds every word below that prefix; a search (the lexicon decoder) passes a threshold
and the pairs whose bound falls below it are not descended.
"""
import math

import numpy as np

from ..errors import shown
from .common import DecoderError, check_alphabet, encode, log_softmax, symbol_index

# Underflow: each operation that leaves float64's normal range errs by at most 2.5e-324, and such an
# error grows by at most classes^columns (the backward mass of the scaled variables) on its way to a
# result, over fewer than 1e8 operations. Results above 1e-290 x classes^columns (and 1e-250) are
# therefore exact to 1e-20 relative; smaller ones are redone in log space, as is every result when
# classes^columns exceeds e^250.
_LINEAR_LIMIT = 250.0
_CHUNK = 4096       # requests computed together: their pairs' forward variables stay in cache


class PrefixTree:
    """Code sequences as the nodes of a prefix tree.

    Level k (1..depth) holds the distinct k-symbol prefixes, numbered in lexicographic order;
    ``parent[k]`` is each node's parent at level k-1 (level 0 is the empty prefix, node 0),
    ``symbol[k]`` its last symbol and ``repeat[k]`` whether that symbol repeats the parent's.
    ``prefix_node[offsets[w] + k - 1]`` is sequence w's node at level k, and ``rank`` orders the
    sequences so that, among those of at least k symbols, their level-k nodes never decrease.
    """

    def __init__(self, codes, offsets):
        codes = np.asarray(codes, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        self.offsets, self.lengths = offsets, lengths
        count = len(lengths)
        self.depth = int(lengths.max()) if count else 0
        previous = np.zeros(count, dtype=np.int64)        # each sequence's node at the previous level
        self.parent, self.symbol, self.repeat = [None], [None], [None]
        self.prefix_node = np.zeros(codes.size, dtype=np.int64)
        repeats = np.zeros(count, dtype=np.int64)
        previous_symbol = np.full(count, -1, dtype=np.int64)
        span = int(codes.max()) + 2 if codes.size else 1
        for k in range(1, self.depth + 1):
            rows = np.flatnonzero(lengths >= k)
            symbols = codes[offsets[rows] + k - 1]
            keys, node = np.unique(previous[rows] * span + symbols, return_inverse=True)
            node = node.reshape(-1)
            self.parent.append(keys // span)
            self.symbol.append((keys % span).astype(np.int64))
            repeat = symbols == previous_symbol[rows]
            node_repeat = np.zeros(keys.size, dtype=bool)
            node_repeat[node] = repeat
            self.repeat.append(node_repeat)
            repeats[rows] += repeat
            previous_symbol[rows] = symbols
            previous[rows] = node
            self.prefix_node[offsets[rows] + k - 1] = node
        self.need = lengths + repeats                      # columns a sequence needs at least
        self.end_node = previous                           # node at the sequence's own level (0: empty)
        self.rank = self._preorder()

    def nodes(self, k):
        return len(self.parent[k]) if k else 1

    def _preorder(self):
        """Each sequence's rank: the preorder number of its last node (children by symbol)."""
        sizes = [None] * (self.depth + 1)
        for k in range(self.depth, -1, -1):               # subtree sizes, bottom up
            size = np.ones(self.nodes(k))
            if k < self.depth:
                size += np.bincount(self.parent[k + 1], weights=sizes[k + 1], minlength=self.nodes(k))
            sizes[k] = size
        order = [np.zeros(1)]
        for k in range(1, self.depth + 1):                 # top down: parent's number + earlier siblings
            size, parent = sizes[k], self.parent[k]
            before = np.cumsum(size) - size
            first = np.searchsorted(parent, parent)         # the first sibling of each node (ids sorted by parent)
            order.append(order[k - 1][parent] + 1 + before - before[first])
        rank = np.zeros(len(self.lengths))
        for k in range(1, self.depth + 1):
            ends = np.flatnonzero(self.lengths == k)
            rank[ends] = order[k][self.end_node[ends]]
        return rank.astype(np.int64)


class Emissions:
    """A batch's log-probabilities (B, T, C) prepared for :func:`forward` and the lexicon bounds.

    ``top`` (T, B) is the log of each column's most probable class, ``scaled`` (T, B, C) the
    probabilities divided by it (at most 1), ``log_scale`` (B,) the sum of ``top`` over the
    columns. Linear mode (``log=False``) runs the forward algorithm on ``scaled``; log mode on
    the log-probabilities themselves (``log_scale`` 0).
    """

    def __init__(self, log_probs, *, log=None):
        self.log_probs = log_probs
        images, columns, classes = log_probs.shape
        self.images, self.columns, self.classes = images, columns, classes
        growth = columns * math.log(max(classes, 2))
        self.log = growth > _LINEAR_LIMIT if log is None else log
        self.tiny = max(1e-250, math.exp(growth - 290 * math.log(10))) if not self.log else 0.0
        if columns == 0:
            return
        by_column = np.ascontiguousarray(log_probs.transpose(1, 0, 2))          # (T, B, C)
        self.top = by_column.max(axis=2)
        self.scaled = np.exp(by_column - self.top[:, :, None])
        blank = by_column[:, :, -1]
        self.empty = blank.sum(axis=0)                                         # log P("") per image
        if self.log:
            self.table = by_column.reshape(columns, images * classes)
            self.log_scale = np.zeros(images)
            start = np.concatenate([np.zeros((1, images)), np.cumsum(blank, axis=0)[:-1]])
        else:
            self.table = self.scaled.reshape(columns, images * classes)
            self.log_scale = self.top.sum(axis=0)
            cumulative = np.cumsum(self.top, axis=0)
            self.weight = np.exp(cumulative - cumulative[-1])                  # (T, B): >= 1, for prefix bounds
            start = np.concatenate([np.ones((1, images)), np.cumprod(self.scaled[:, :, -1], axis=0)[:-1]])
        self.root = np.ascontiguousarray(start)   # (T, B) mass entering a first label at t: all blanks before

    def in_log_space(self):
        return Emissions(self.log_probs, log=True)


def _pairs(keys):
    """(first (n,) bool, pair of each (n,)) for non-decreasing keys."""
    first = np.empty(keys.size, dtype=bool)
    if keys.size:
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return first, np.cumsum(first) - 1


class _Level:
    """The forward variables of one level's (image, prefix) pairs, for columns lo..hi.

    ``rows`` (n + 1, 3Q): row j holds [IN_t, L_{t-1}, B_{t-1}] at t = lo + j; ``sums``
    (n + 1, 2Q): row j holds [L_{t-1} + IN_t, S_{t-1}] (S = L + B), the sums of the step at t.
    A child reads the mass entering its label, S_{t-1} (B_{t-1} after a repeated label), from
    them without a copy.
    """

    def __init__(self, lo, hi, sums, rows):
        self.lo, self.hi, self.sums, self.rows = lo, hi, sums, rows
        self.count = sums.shape[1] // 2

    @classmethod
    def root(cls, emissions):
        """Level 0: one pair per image, the empty prefix; S_{t-1} is all blanks before t (1 at t = 0)."""
        sums = np.zeros((emissions.columns + 1, 2 * emissions.images))
        sums[1:, emissions.images:] = emissions.root
        return cls(-1, emissions.columns - 1, sums, None)

    def entering(self, parents, repeat, n):
        """(n, pairs): the mass that can enter each child's label at the children's columns lo + 1 + j."""
        values = self.sums[1:n + 1, self.count + parents]
        if repeat is not None and repeat.any():
            where = np.flatnonzero(repeat)
            values[:, where] = self.rows[1:n + 1, 2 * self.count + parents[where]]
        return values

    def final(self, pairs):
        """S at the last column for ``pairs`` (the level must reach it)."""
        return self.sums[-1, self.count + pairs]


def _level(emissions, previous, parents, repeat, images, symbols, window, want_bound):
    """The :class:`_Level` of pairs with these ``parents`` in ``previous`` (and ``repeat``: the
    label repeats the parent's), last ``symbols`` and ``images``, over columns ``window``; with
    the prefix bounds (scaled like S) when ``want_bound``."""
    table, classes = emissions.table, emissions.classes
    add, multiply = (np.logaddexp, np.add) if emissions.log else (np.add, np.multiply)
    lo, hi = window
    n = hi - lo + 1
    q = parents.size
    rows = np.empty((n + 1, 3 * q))
    sums = np.empty((n + 1, 2 * q))
    rows[0, q:] = -np.inf if emissions.log else 0.0
    rows[:n, :q] = previous.entering(parents, repeat, n)
    base = images * classes
    factors = table[lo:hi + 1][:, np.concatenate([base + symbols, base + (classes - 1)])]
    for j in range(n):            # [L + IN, B + L] at column lo + j, times [e(label), e(blank)]
        add(rows[j, q:], rows[j, :2 * q], out=sums[j])
        multiply(sums[j], factors[j], out=rows[j + 1, q:])
    add(rows[n, q:2 * q], rows[n, 2 * q:], out=sums[n, q:])
    bound = None
    if want_bound:
        bound = np.einsum("tq,tq->q", rows[:n, :q] * factors[:, :q], emissions.weight[lo:hi + 1, images])
    return _Level(lo, hi, sums, rows), bound


def forward(tree, emissions, images, sequences, *, search=None):
    """Exact log P(sequence | image) for requests (images[i], sequences[i]): a float64 array.

    ``sequences`` index the tree's sequences, ``images`` the emissions' batch. -inf for a
    sequence that needs more columns than there are. ``search`` (the lexicon decoder's) may
    stop requests that can no longer matter: ``search.finished(requests, values)`` gets each
    exact value as it is known, ``search.possible(requests)`` says which unfinished requests
    may still matter, and ``search.scaled_limit(images, log_scale)`` is the least prefix
    probability (scaled like the forward variables) worth descending; a dropped request is
    left at NaN.
    """
    images = np.asarray(images, dtype=np.int64)
    sequences = np.asarray(sequences, dtype=np.int64)
    result = np.full(images.size, -np.inf)
    columns = emissions.columns
    lengths = tree.lengths[sequences]
    if columns == 0:
        result[lengths == 0] = 0.0
        return result
    empty = lengths == 0
    result[empty] = emissions.empty[images[empty]]
    todo = np.flatnonzero(~empty & (tree.need[sequences] <= columns))
    if search is not None:
        result[todo] = np.nan
    if not todo.size:
        return result
    order = np.lexsort((tree.rank[sequences[todo]], images[todo]))
    todo = todo[order]
    redo = []
    for start in range(0, todo.size, _CHUNK):
        redo.append(_forward_chunk(tree, emissions, todo[start:start + _CHUNK], images, sequences, lengths, result,
                                   search))
    redo = np.concatenate(redo)
    if redo.size:   # underflow in linear mode: the same recursion in log space, exact at any range
        result[redo] = forward(tree, emissions.in_log_space(), images[redo], sequences[redo])
        if search is not None:
            search.finished(redo, result[redo])
    return result


def _forward_chunk(tree, emissions, chunk, images, sequences, lengths, result, search):
    """Run :func:`forward` for requests ``chunk`` (sorted by image, then rank); returns the ones to redo."""
    columns = emissions.columns
    image_of, length_of = images[chunk], lengths[chunk]
    start_of = tree.offsets[sequences[chunk]] - 1   # prefix_node[start_of + k]: the node at level k
    alive = np.arange(chunk.size)                 # positions in chunk still to compute
    pair_of = image_of.copy()                     # level 0: one pair per image, the empty prefix
    previous = _Level.root(emissions)
    redo = []
    bound_every, since_bound = 1, 0               # prefix bounds are skipped while they prune nothing
    for k in range(1, int(length_of.max()) + 1):
        node = tree.prefix_node[start_of[alive] + k]
        first, pair = _pairs(image_of[alive] * tree.nodes(k) + node)
        firsts = alive[first]
        pair_nodes = node[first]
        remaining = length_of[alive] - k
        window = (k - 1, columns - 1 - int(remaining.min()))
        since_bound += 1
        want_bound = search is not None and not emissions.log and since_bound >= bound_every
        pair_images = image_of[firsts]
        level, bound = _level(emissions, previous, pair_of[firsts], tree.repeat[k][pair_nodes] if k > 1 else None,
                              pair_images, tree.symbol[k][pair_nodes], window, want_bound)
        pair_of[alive] = pair
        previous = level
        ends = remaining == 0
        done = alive[ends]
        if done.size:
            value = level.final(pair[ends])
            if emissions.log:
                result[chunk[done]] = value
            else:
                low = value < emissions.tiny
                redo.append(chunk[done[low]])
                done, value = done[~low], value[~low]
                result[chunk[done]] = np.log(value) + emissions.log_scale[image_of[done]]
            alive = alive[~ends]
            pair = pair[~ends]
        if search is not None:
            search.finished(chunk[done], result[chunk[done]])
            keep = search.possible(chunk[alive])
            if bound is not None:
                since_bound = 0
                limit = search.scaled_limit(pair_images, emissions.log_scale)
                pair_keep = ~((bound < limit) & (limit > emissions.tiny))
                pruned = np.count_nonzero(~pair_keep)
                bound_every = 1 if pruned * 100 >= pair_keep.size else min(2 * bound_every, 4)
                keep &= pair_keep[pair]
            alive = alive[keep]
        if not alive.size:
            break
    return np.concatenate(redo) if redo else np.zeros(0, dtype=np.int64)


def sequence_log_probs(log_probs, images, codes_list):
    """Exact log P for requests (images[i], codes_list[i]) on (B, T, C) log-probabilities."""
    offsets = np.zeros(len(codes_list) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in codes_list], out=offsets[1:])
    flat = np.fromiter((c for codes in codes_list for c in codes), dtype=np.int64, count=int(offsets[-1]))
    tree = PrefixTree(flat, offsets)
    return forward(tree, Emissions(log_probs), images, np.arange(len(codes_list)))


def _check_words(words):
    if isinstance(words, str):
        return [words]                                  # one word, not its characters
    if isinstance(words, (bytes, bytearray)):
        raise TypeError("words must be a string or a list of strings, not bytes")
    try:
        words = list(words)
    except TypeError:
        raise TypeError(f"words must be a string or a list of strings, got {type(words).__name__}") from None
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"words must be strings, got {shown(word)}")
    return words


def ctc_log_probability(logits, alphabet, words):
    """Exact log P(word | image) under CTC for every image and word: a (B, N) float64 array.

    The sum over all alignments (forward algorithm); -inf for a word too long for the columns.
    ``words``: a list of words or one word. Words are taken as they are (no case folding); a
    symbol outside the alphabet is an error.
    """
    check_alphabet(alphabet)
    words = _check_words(words)
    log_probs = log_softmax(logits, alphabet)
    index = symbol_index(alphabet)
    for word in words:
        if any(ch not in index for ch in word):
            raise DecoderError(f"{shown(word)} has symbols outside the alphabet {shown(alphabet)}")
    batch = log_probs.shape[0]
    if not words or not batch:
        return np.empty((batch, len(words)))
    codes, offsets = encode(words, index)
    tree = PrefixTree(codes, offsets)
    images = np.repeat(np.arange(batch), len(words))
    values = forward(tree, Emissions(log_probs), images, np.tile(np.arange(len(words)), batch))
    return values.reshape(batch, len(words))


def best_alignment_chars(log_probs, codes, alphabet):
    """(symbol, probability) per label along the most probable alignment of ``codes`` (Viterbi).

    ``log_probs`` is one image's (T, C); a label's probability is its class probability in the
    first column that emits it.
    """
    length = len(codes)
    if length == 0:
        return ()
    blank = len(alphabet)
    ext = np.full(2 * length + 1, blank, dtype=np.int64)
    ext[1::2] = codes
    skip = np.zeros(ext.size, dtype=bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
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
