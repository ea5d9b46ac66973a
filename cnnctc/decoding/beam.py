"""CTC prefix beam search; the readings it finds are scored exactly by the forward algorithm."""
import numpy as np

from .common import MAX_BEAM_WIDTH, MAX_TOP_K, DecoderError, Prediction, check_count, log_softmax, symbol_index
from .forward import best_alignment_chars, sequence_log_probs
from .greedy import ctc_greedy_decode

_WIDTH_WHY = " (a beam that wide costs memory and time and changes no reading a network gives)"
_CELLS = 1 << 22    # images x beam x classes scored at once: bounds the working memory


def check_beam_arguments(beam_width, top_k):
    """(beam_width, top_k) as ints, or DecoderError naming the one that is wrong."""
    beam_width = check_count("beam_width", beam_width, largest=MAX_BEAM_WIDTH, why=_WIDTH_WHY)
    top_k = check_count("top_k", top_k, largest=MAX_TOP_K)
    if top_k > beam_width:
        raise DecoderError(f"top_k ({top_k}) cannot exceed beam_width ({beam_width}): the beam keeps only "
                           f"{beam_width} readings")
    return beam_width, top_k


def _prefix_count(symbols, columns, limit):
    """min(limit, the number of distinct readings of at most ``columns`` symbols)."""
    total, power = 0, 1
    for _ in range(columns + 1):
        total += power
        if total >= limit:
            return limit
        power *= symbols
    return total


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
    is blank. ``beam_width`` is at most MAX_BEAM_WIDTH.
    """
    beam_width, top_k = check_beam_arguments(beam_width, top_k)
    log_probs = log_softmax(logits, alphabet)
    batch, columns, classes = log_probs.shape
    if not batch:
        return []
    # A beam wider than the number of possible readings holds no more of them.
    width = _prefix_count(classes - 1, columns, beam_width)
    group = max(1, _CELLS // (width * classes))
    beams = [ranked for start in range(0, batch, group)
             for ranked in _beam_search(log_probs[start:start + group], width)]
    index = symbol_index(alphabet)
    candidates = []
    for b, prediction in enumerate(ctc_greedy_decode(logits, alphabet)):
        found = [prefix for prefix, _ in beams[b]]
        greedy = tuple(index[ch] for ch in prediction.text)
        candidates.append(found if greedy in found else found + [greedy])
    images = np.concatenate([np.full(len(found), b) for b, found in enumerate(candidates)])
    scores = sequence_log_probs(log_probs, images, [prefix for found in candidates for prefix in found])
    results, start = [], 0
    for b, found in enumerate(candidates):
        values = scores[start:start + len(found)]
        start += len(found)
        predictions = []
        for i in np.argsort(-values, kind="stable")[:top_k]:
            prefix = found[i]
            chars = best_alignment_chars(log_probs[b], prefix, alphabet) if with_chars else ()
            predictions.append(Prediction("".join(alphabet[c] for c in prefix), float(np.exp(values[i])), chars))
        results.append(predictions)
    return results
