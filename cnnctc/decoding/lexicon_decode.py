"""Lexicon decoding: the word of a lexicon with the highest exact CTC probability, found without
scoring every word.

Every candidate gets a cheap upper bound on its probability (:mod:`.bounds`); the few words
with the best bounds of each image are scored exactly first, and their k-th best probability
becomes the image's threshold. A word whose bound is below it cannot enter the result; the
rest are scored over the lexicon's prefix tree (:mod:`.forward`), all images at once, the best
bounds first in rounds of doubling size; the threshold rises as words finish, and requests whose
bound, or whose prefix's probability, falls below it are dropped on the way down. Equal
probabilities go to the earlier word, as a full evaluation would have it.
"""
import numpy as np

from . import forward as _forward
from .common import MAX_TOP_K, Prediction, check_count, log_softmax, symbol_index
from .greedy import ctc_greedy_decode
from .lexicon import check_lexicon

_SEEDS = 16      # words per image scored first, by best bound, to set the thresholds
_REFINE = 32     # candidates of an image above which the per-column bound is worth computing
_SAMPLE = 64     # candidates of an image the per-column bound is tried on before the others
_ROUND = 64      # words per image in the first round of exact scoring; the rounds double
_WHOLE = 1024    # (image, word) candidates up to which all are scored, without bounds


def _slack(threshold):
    return threshold - 1e-9 * (1.0 + np.abs(threshold))    # rounding of bounds and values


class _Search:
    """Per-image thresholds (the k-th best exact log-probability found so far) for requests
    (image, word) with upper bounds."""

    def __init__(self, images, bounds, batch, top_k):
        self.images, self.bounds, self.top_k = images, bounds, top_k
        self.best = np.full((batch, top_k), -np.inf)           # each image's k best values, descending
        self.threshold = np.full(batch, -np.inf)

    def finished(self, requests, values):
        ok = np.isfinite(values)
        self.add(self.images[requests[ok]], values[ok])

    def add(self, images, values):
        if not values.size:
            return
        batch, k = self.best.shape
        if k == 1:
            np.maximum.at(self.best[:, 0], images, values)
        else:
            all_images = np.concatenate([np.repeat(np.arange(batch), k), images])
            all_values = np.concatenate([self.best.reshape(-1), values])
            order = np.lexsort((-all_values, all_images))
            all_images, all_values = all_images[order], all_values[order]
            start = np.searchsorted(all_images, np.arange(batch))
            place = np.arange(all_images.size) - start[all_images]
            keep = place < k
            self.best[all_images[keep], place[keep]] = all_values[keep]
        self.threshold = _slack(self.best[:, -1])

    def possible(self, requests):
        return self.bounds[requests] >= self.threshold[self.images[requests]]

    def scaled_limit(self, images, log_scale):
        with np.errstate(over="ignore"):
            return np.exp(self.threshold[images] - log_scale[images])


def _largest(bound, count):
    """Per row of ``bound`` (rows, n), the indices of ``count`` of its largest values (all when fewer)."""
    rows, n = bound.shape
    if n <= count:
        return [np.arange(n)] * rows
    near_rows, near = np.nonzero(bound >= bound.max(axis=1, keepdims=True) - 3.0)   # usually few
    starts = np.searchsorted(near_rows, np.arange(rows + 1))
    chosen = []
    for r in range(rows):
        pool = near[starts[r]:starts[r + 1]]
        if pool.size < count:
            pool = np.arange(n)
        chosen.append(pool[np.argpartition(-bound[r, pool], count - 1)[:count]] if pool.size > count else pool)
    return chosen


def _first_bounds(lexicon, emissions, candidates):
    """[(words, (rows, words) first bounds)] covering the images in order: one matrix for all
    images when they share ``candidates``, else one row per image."""
    bounds_of = lexicon._bounds
    if isinstance(candidates, list):
        return [(c, bounds_of.first(emissions, c, [b])) for b, c in enumerate(candidates)]
    return [(candidates, bounds_of.first(emissions, None if candidates.size == len(lexicon) else candidates))]


def _possible(matrices, seeds, threshold):
    """Flat (images, words, bounds), sorted by image, of the candidates other than the seeds
    whose bound reaches their image's threshold."""
    parts, row = [], 0
    for words, bound in matrices:
        mask = bound >= threshold[row:row + bound.shape[0], None]
        for r in range(bound.shape[0]):
            mask[r, seeds[row + r]] = False
        rows, columns = np.nonzero(mask)
        parts.append((rows + row, words[columns], bound[rows, columns]))
        row += bound.shape[0]
    return tuple(np.concatenate(part) for part in zip(*parts))


def _refine(lexicon, emissions, images, words, bounds, threshold):
    """The candidates still possible under ``threshold``, with the per-column bound for images
    that have many (tried on a sample first: skipped where it is hardly tighter)."""
    keep = bounds >= threshold[images]
    images, words, bounds = images[keep], words[keep], bounds[keep]
    starts = np.searchsorted(images, np.arange(emissions.images + 1))
    parts = []
    for b in range(emissions.images):
        segment = slice(starts[b], starts[b + 1])
        count = starts[b + 1] - starts[b]
        if count <= _REFINE:
            parts.append((images[segment], words[segment], bounds[segment]))
            continue
        w, bound = words[segment], bounds[segment].copy()
        tried = min(count, _SAMPLE)
        bound[:tried] = lexicon._bounds.per_column(emissions, b, w[:tried], bound[:tried])
        if tried < count and np.count_nonzero(bound[:tried] < bounds[segment][:tried] - 0.5) * 10 >= tried:
            bound[tried:] = lexicon._bounds.per_column(emissions, b, w[tried:], bound[tried:])
        keep = bound >= threshold[b]
        parts.append((images[segment][keep], w[keep], bound[keep]))
    return tuple(np.concatenate(part) for part in zip(*parts))


def _best_words(lexicon, emissions, candidates, top_k):
    """Per image, the ``top_k`` most probable candidate words: [(word index, log P)], best first.

    ``candidates``: one array of word indices for every image, or a list with one per image.
    """
    batch = emissions.images
    shared = not isinstance(candidates, list)
    if (candidates.size * batch if shared else sum(c.size for c in candidates)) <= _WHOLE:
        # few: scoring them all costs less than bounding them
        if shared:
            images, words = np.repeat(np.arange(batch), candidates.size), np.tile(candidates, batch)
        else:
            images = np.concatenate([np.full(c.size, b) for b, c in enumerate(candidates)])
            words = np.concatenate(candidates)
        return _ranked(batch, top_k, images, words, _forward.forward(lexicon._tree, emissions, images, words))
    matrices = _first_bounds(lexicon, emissions, candidates)
    # The words with the best bounds first: their exact values set the thresholds.
    seeds = [first for words, bound in matrices for first in _largest(bound, max(_SEEDS, top_k))]
    seed_images = np.concatenate([np.full(first.size, b) for b, first in enumerate(seeds)])
    row_words = [words for words, bound in matrices for _ in range(bound.shape[0])]
    seed_words = np.concatenate([row_words[b][first] for b, first in enumerate(seeds)])
    seed_values = _forward.forward(lexicon._tree, emissions, seed_images, seed_words)
    search = _Search(None, None, batch, top_k)
    finite = np.isfinite(seed_values)
    search.add(seed_images[finite], seed_values[finite])
    # Every other word whose bound reaches its image's threshold is scored, the best bounds
    # first and in growing rounds, so that the thresholds rise before the bulk.
    images, words, bounds = _refine(lexicon, emissions, *_possible(matrices, seeds, search.threshold),
                                    search.threshold)
    order = np.lexsort((-bounds, images))
    images, words, bounds = images[order], words[order], bounds[order]
    rank = np.arange(images.size) - np.searchsorted(images, images)
    scored = [(seed_images, seed_words, seed_values)]
    taken, size = 0, _ROUND
    while taken < (rank.max() + 1 if rank.size else 0):
        pick = np.flatnonzero((rank >= taken) & (rank < taken + size))
        pick = pick[bounds[pick] >= search.threshold[images[pick]]]
        taken, size = taken + size, size * 2
        if not pick.size:
            continue
        search.images, search.bounds = images[pick], bounds[pick]
        scored.append((images[pick], words[pick],
                       _forward.forward(lexicon._tree, emissions, images[pick], words[pick], search=search)))
    return _ranked(batch, top_k, *(np.concatenate(part) for part in zip(*scored)))


def _ranked(batch, top_k, all_images, all_words, all_values):
    """Per image, the ``top_k`` best (word, log P) of the scored requests, ties to the earlier word."""
    ok = np.isfinite(all_values)
    all_images, all_words, all_values = all_images[ok], all_words[ok], all_values[ok]
    order = np.lexsort((all_words, -all_values, all_images))
    all_images, all_words, all_values = all_images[order], all_words[order], all_values[order]
    start = np.searchsorted(all_images, np.arange(batch + 1))
    stop = np.minimum(start[:-1] + top_k, start[1:])
    return [[(int(w), float(v)) for w, v in zip(all_words[start[b]:stop[b]], all_values[start[b]:stop[b]])]
            for b in range(batch)]


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
        max_distance = check_count("max_distance", max_distance, smallest=0)
    top_k = check_count("top_k", top_k, largest=MAX_TOP_K)
    log_probs = log_softmax(logits, alphabet)
    lexicon = check_lexicon(lexicon, alphabet)
    greedy = ctc_greedy_decode(logits, alphabet)
    index = symbol_index(alphabet)
    batch, columns = log_probs.shape[:2]
    if not batch:
        return []
    fits = lexicon.fitting(columns)
    if max_distance is None:
        candidates = fits
    else:
        candidates = []
        for b in range(batch):
            near = lexicon.within_distance([index[ch] for ch in greedy[b].text], max_distance)
            candidates.append(near[lexicon._need[near] <= columns])
    if columns and (fits.size if max_distance is None else sum(c.size for c in candidates)):
        best = _best_words(lexicon, _forward.Emissions(log_probs), candidates, top_k)
    else:
        best = [[] for _ in range(batch)]
    results = []
    for b in range(batch):
        if not best[b]:
            results.append(Prediction("", 0.0, (), greedy=greedy[b].text))
            continue
        (word_index, log_p), rest = best[b][0], best[b][1:]
        word = lexicon.words[word_index]
        chars = _forward.best_alignment_chars(log_probs[b], [index[ch] for ch in word], alphabet) if with_chars else ()
        results.append(Prediction(word, float(np.exp(log_p)), chars, greedy=greedy[b].text,
                                  alternatives=tuple((lexicon.words[i], float(np.exp(v))) for i, v in rest)))
    return results
