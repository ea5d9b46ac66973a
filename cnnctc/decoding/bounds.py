"""Upper bounds on a lexicon word's CTC probability, for many words and images at once.

With m_t(w) = p_t(blank) + the probabilities of the word's distinct symbols in column t (the
mass its alignments can use there):

- every alignment uses only those classes and is not all blanks, so
  P <= prod_t m_t - prod_t p_t(blank);
- with tau_1 < ... < tau_L the columns where the labels are first emitted,
  P <= prod_t m_t * sum over tau of prod_k p_tau_k(w_k) / m_tau_k, and
  p_t(c) / m_t <= rho_t(c) = p_t(c) / (p_t(c) + p_t(blank)), so
  P <= prod_t m_t * min(1, prod_k sum_t rho_t(w_k)): each label must be emitted somewhere;
- P <= (number of alignments) x prod_t (the column's top probability).

The first bound, for every word and image at once, replaces prod_t m_t by (mean_t m_t)^T
(AM-GM: no smaller, and T times cheaper); the per-column one is computed for the words it
leaves. Everything is computed on probabilities divided by each column's top one
(:class:`~cnnctc.decoding.forward.Emissions`), with rho in log space, so no bound is lost to
underflow; the floors (1e-300) and caps only raise a bound.
"""
import math

import numpy as np

_DENSE_LIMIT = 1 << 23   # words x classes up to which symbol sets are kept as dense matrices


def _segments(offsets, rows):
    """Positions of the entries of ``rows`` in a flat array cut at ``offsets``, and their new offsets."""
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    new = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=new[1:])
    positions = np.arange(new[-1]) - np.repeat(new[:-1] - starts, lengths)
    return positions, new


class WordBounds:
    """The symbol tables of a word list (flat ``codes`` cut at ``offsets``) that its bounds need."""

    def __init__(self, codes, offsets, repeats, classes):
        count = offsets.size - 1
        self.classes = classes                               # alphabet symbols + the blank
        self.lengths, self.repeats = np.diff(offsets), np.asarray(repeats)
        word_of = np.repeat(np.arange(count), self.lengths)
        order = np.lexsort((codes, word_of))
        sorted_codes, sorted_words = codes[order], word_of[order]
        new = np.ones(codes.size, dtype=bool)
        new[1:] = (sorted_codes[1:] != sorted_codes[:-1]) | (sorted_words[1:] != sorted_words[:-1])
        self._codes, self._offsets = codes, offsets
        self._distinct = sorted_codes[new]
        self._distinct_offsets = np.searchsorted(sorted_words[new], np.arange(count + 1))
        self._members = self._multiplicity = None
        if count * classes <= _DENSE_LIMIT:
            symbols = classes - 1
            self._members = np.zeros((symbols, count))
            self._members[self._distinct, sorted_words[new]] = 1.0
            self._multiplicity = np.zeros((symbols, count))
            np.add.at(self._multiplicity, (codes, word_of), 1.0)
        self._counts = {}

    def alignment_log_counts(self, columns):
        """log of the number of alignments of each word in ``columns`` columns (-inf: it does not fit).

        A word of L symbols with r adjacent repeats has C(T + L - r, 2L) alignments in T columns.
        """
        if columns not in self._counts:
            keys, inverse = np.unique(self.lengths * (int(self.repeats.max(initial=0)) + 1) + self.repeats,
                                      return_inverse=True)
            span = int(self.repeats.max(initial=0)) + 1
            values = np.array([math.lgamma(columns + L - r + 1) - math.lgamma(2 * L + 1)
                               - math.lgamma(columns - L - r + 1) if L + r <= columns else -np.inf
                               for L, r in zip((keys // span).tolist(), (keys % span).tolist())])
            self._counts[columns] = values[inverse.reshape(-1)]
        return self._counts[columns]

    def _symbol_sums(self, values, words, distinct):
        """(rows, words): per row of ``values`` (rows, symbols), the sum over each word's symbols
        (each distinct symbol once, or with its multiplicity)."""
        dense = self._members if distinct else self._multiplicity
        if dense is not None:
            return values @ (dense if words is None else dense[:, words])
        codes, offsets = (self._distinct, self._distinct_offsets) if distinct else (self._codes, self._offsets)
        if words is not None:
            positions, offsets = _segments(offsets, words)
            codes = codes[positions]
        return np.stack([np.add.reduceat(row[codes], offsets[:-1]) for row in values])

    @staticmethod
    def _log_rho(emissions, images):
        """(images, symbols): log sum_t rho_t(c), from the log-probabilities (no underflow)."""
        log_probs = emissions.log_probs[images]
        symbols, blank = log_probs[..., :-1], log_probs[..., -1:]
        return np.logaddexp.reduce(symbols - np.logaddexp(symbols, blank), axis=-2)

    def first(self, emissions, words=None, images=None):
        """(images, words) bounds min(alignment count bound, mean-column mass bound + label
        bound): the cheapest, for many images and words at once; ``words`` None: every word."""
        counts = self.alignment_log_counts(emissions.columns)
        images = np.arange(emissions.images) if images is None else np.asarray(images)
        top = emissions.top[:, images]
        log_top = top.sum(axis=0)[:, None]
        mean = emissions.scaled[:, images].mean(axis=0)                       # (images, C)
        mass = self._symbol_sums(mean[:, :-1], words, distinct=True)
        mass += mean[:, -1:]
        np.maximum(mass, 1e-300, out=mass)
        bound = np.log(mass, out=mass)
        bound *= emissions.columns
        bound += log_top
        emitted = self._symbol_sums(self._log_rho(emissions, images), words, distinct=False)
        np.minimum(emitted, 0.0, out=emitted)
        bound += emitted
        np.minimum(bound, (counts if words is None else counts[words])[None, :] + log_top, out=bound)
        return bound

    def _refine(self, emissions, image, words, bound, log_mass):
        """min(bound, mass bound + min(label bound, not-all-blank bound)) of one image."""
        mass_bound = log_mass + emissions.top[:, image].sum()
        blank_sum = emissions.log_probs[image, :, -1].sum()
        emitted = np.minimum(self._symbol_sums(self._log_rho(emissions, [image]), words, distinct=False)[0],
                             0.0)
        gap = blank_sum - mass_bound
        not_blank = np.zeros_like(mass_bound)
        near = gap > -40.0                        # elsewhere log1p(-exp(gap)) rounds to 0
        not_blank[near] = np.log1p(-np.minimum(np.exp(gap[near]), 1.0 - 1e-12))
        return np.minimum(bound, mass_bound + np.minimum(emitted, not_blank))

    def per_column(self, emissions, image, words, bound):
        """(words,) bounds of one image with the mass of every column (tighter, T times dearer)."""
        scaled = emissions.scaled[:, image, :]                                 # (T, C)
        mass = self._symbol_sums(scaled[:, :-1], words, distinct=True) + scaled[:, -1:]
        np.minimum(mass, np.exp(-emissions.top[:, image])[:, None], out=mass)
        columns = mass.shape[0]
        groups = np.empty(((columns + 3) // 4, mass.shape[1]))
        for g, start in enumerate(range(0, columns, 4)):
            groups[g] = mass[start]
            for row in mass[start + 1:start + 4]:
                groups[g] *= row
        np.maximum(groups, 1e-300, out=groups)
        return self._refine(emissions, image, words, bound, np.log(groups).sum(axis=0))
