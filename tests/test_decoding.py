"""CTC beam search, the forward algorithm and lexicon decoding, checked against brute force."""
import itertools
import logging
import os
import random
import threading

import numpy as np
import pytest

from cnnctc.decoding import (DecoderError, Lexicon, LexiconError, Prediction, ctc_beam_decode, ctc_greedy_decode,
                             ctc_lexicon_decode, ctc_log_probability, make_decoder, read_lexicon)
from cnnctc.decoding.forward import Emissions
from cnnctc.errors import CnnctcError


def log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def brute_force(logits, alphabet):
    """{text: log P(text)} summing every one of the C^T paths of one image's (T, C) logits."""
    log_probs = log_softmax(logits)
    columns, classes = log_probs.shape
    blank = classes - 1
    result = {}
    for path in itertools.product(range(classes), repeat=columns):
        text, previous = [], None
        for c in path:
            if c != blank and c != previous:
                text.append(alphabet[c])
            previous = c
        text = "".join(text)
        value = log_probs[np.arange(columns), path].sum()
        result[text] = np.logaddexp(result.get(text, -np.inf), value)
    return result


def levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


# (alphabet, columns, seed, scale): 2-3 symbols, T <= 6; scale 300 makes the float64 forward pass
# underflow, so the log-space recomputation is checked as well.
TINY_CASES = [(alphabet, columns, seed, scale)
              for alphabet, columns in (("ab", 6), ("abc", 5), ("abc", 6), ("ab", 1), ("ab", 3))
              for seed in range(3) for scale in (1.0, 3.0)] + [("abc", 6, 7, 300.0), ("ab", 5, 8, 300.0)]


@pytest.mark.parametrize("alphabet, columns, seed, scale", TINY_CASES)
def test_forward_probability_is_the_sum_over_all_alignments(alphabet, columns, seed, scale):
    logits = np.random.default_rng(seed).normal(size=(1, columns, len(alphabet) + 1)) * scale
    truth = brute_force(logits[0], alphabet)
    too_long = [alphabet[0] * (columns + 1), (alphabet[0] + alphabet[1]) * columns]
    words = sorted(truth) + too_long
    got = ctc_log_probability(logits, alphabet, words)[0]
    expected = np.array([truth[w] for w in sorted(truth)])
    np.testing.assert_allclose(got[:len(truth)], expected, rtol=1e-9, atol=1e-12)
    assert np.isneginf(got[len(truth):]).all()
    np.testing.assert_allclose(np.logaddexp.reduce(got[:len(truth)]), 0.0, atol=1e-9)   # a distribution


@pytest.mark.parametrize("alphabet, columns, seed, scale", TINY_CASES)
def test_full_width_beam_returns_the_brute_force_ranking(alphabet, columns, seed, scale):
    logits = np.random.default_rng(seed).normal(size=(1, columns, len(alphabet) + 1)) * scale
    ranking = sorted(brute_force(logits[0], alphabet).items(), key=lambda item: -item[1])
    every_prefix = sum(len(alphabet) ** n for n in range(columns + 1))
    beam = ctc_beam_decode(logits, alphabet, beam_width=every_prefix, top_k=every_prefix)[0]
    assert [p.text for p in beam] == [text for text, _ in ranking]
    probabilities = np.exp([value for _, value in ranking])
    np.testing.assert_allclose([p.confidence for p in beam], probabilities, rtol=1e-6, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_narrow_beam_confidences_are_exact_sequence_probabilities(seed):
    rng = np.random.default_rng(seed)
    alphabet = "abcd"
    logits = rng.normal(size=(3, 12, 5)) * 2
    beams = ctc_beam_decode(logits, alphabet, beam_width=4, top_k=4)
    greedy = ctc_greedy_decode(logits, alphabet)
    for b, ranked in enumerate(beams):
        assert 1 <= len(ranked) <= 4
        exact = np.exp(ctc_log_probability(logits[b:b + 1], alphabet, [p.text for p in ranked])[0])
        np.testing.assert_allclose([p.confidence for p in ranked], exact, rtol=1e-9)
        assert [p.confidence for p in ranked] == sorted((p.confidence for p in ranked), reverse=True)
        assert len({p.text for p in ranked}) == len(ranked)
        greedy_p = np.exp(ctc_log_probability(logits[b:b + 1], alphabet, [greedy[b].text])[0, 0])
        assert ranked[0].confidence >= greedy_p * (1 - 1e-12)


@pytest.mark.parametrize("search", [False, True], ids=["scored whole", "bounded search"])
@pytest.mark.parametrize("alphabet, columns, seed, scale", TINY_CASES[::3])
def test_lexicon_decoder_picks_the_brute_force_best_word(alphabet, columns, seed, scale, search, monkeypatch):
    import cnnctc.decoding.lexicon_decode as lexicon_decode
    if search:      # short lists are scored whole; this one takes the bounds and the pruning as well
        monkeypatch.setattr(lexicon_decode, "_WHOLE", 0)
    logits = np.random.default_rng(seed).normal(size=(1, columns, len(alphabet) + 1)) * scale
    truth = brute_force(logits[0], alphabet)
    rng = random.Random(seed)
    possible = sorted(truth)            # possible[0] is "", which a lexicon drops
    lexicon = rng.sample(possible[1:], max(1, len(possible) // 3)) + [alphabet[0] * (columns + 1)]
    greedy = ctc_greedy_decode(logits, alphabet)[0].text

    def expected_ranking(words):
        words = [w for w in words if w in truth]
        return sorted(words, key=lambda w: (-truth[w], lexicon.index(w)))

    for max_distance in (None, 0, 1, 2):
        allowed = [w for w in lexicon if max_distance is None or levenshtein(w, greedy) <= max_distance]
        ranking = expected_ranking(allowed)
        result = ctc_lexicon_decode(logits, alphabet, lexicon, max_distance=max_distance, top_k=3)[0]
        assert result.greedy == greedy
        if not ranking:
            assert (result.text, result.confidence, result.alternatives) == ("", 0.0, ())
            continue
        assert result.text == ranking[0]
        assert result.confidence == pytest.approx(np.exp(truth[ranking[0]]), rel=1e-6)
        assert [w for w, _ in result.alternatives] == ranking[1:3]
        for word, probability in result.alternatives:
            assert probability == pytest.approx(np.exp(truth[word]), rel=1e-6)


def random_lexicon(rng, alphabet, count, longest):
    return list(dict.fromkeys("".join(rng.choice(alphabet) for _ in range(rng.randint(1, longest)))
                              for _ in range(count)))


# Confident, moderately sure and nearly flat network outputs: the bounds prune differently.
REGIMES = {"peaked": (8.0, 1.0), "moderate": (3.0, 1.0), "flat": (0.2, 0.3)}


def regime_logits(rng, alphabet, words, columns, regime):
    """Logits that spell ``words`` (one per image) with the regime's confidence, plus noise."""
    gain, noise = REGIMES[regime]
    logits = rng.normal(size=(len(words), columns, len(alphabet) + 1)) * noise
    logits[:, :, -1] += gain * 0.7
    for b, word in enumerate(words):
        for column, ch in zip(np.linspace(1, columns - 2, len(word)).astype(int), word):
            logits[b, column, alphabet.index(ch)] += gain
    return logits


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_bounds_hold_and_skipping_never_changes_the_answer(regime):
    rng = random.Random(regime)
    alphabet = "abcde"
    words = random_lexicon(rng, alphabet, 400, 7)
    lexicon = Lexicon(words, alphabet)
    columns = 14
    truths = [rng.choice(words) for _ in range(6)]
    logits = regime_logits(np.random.default_rng(len(regime)), alphabet, truths, columns, regime)
    exact = ctc_log_probability(logits, alphabet, lexicon.words)             # no pruning: every word
    fits = np.flatnonzero(np.isfinite(exact[0]))
    emissions = Emissions(log_softmax(logits))
    first = lexicon._bounds.first(emissions, fits)
    for b in range(len(truths)):
        unbounded = np.full(fits.size, np.inf)
        for bounds in (first[b], lexicon._bounds.per_column(emissions, b, fits, unbounded)):
            assert (bounds >= exact[b, fits] - 1e-9).all()                  # every bound is an upper bound
    results = ctc_lexicon_decode(logits, alphabet, lexicon, top_k=5)
    for b, result in enumerate(results):
        order = np.lexsort((np.arange(len(lexicon)), -exact[b]))[:5]
        assert result.text == lexicon.words[order[0]]
        assert result.confidence == pytest.approx(np.exp(exact[b, order[0]]), rel=1e-9)
        assert [w for w, _ in result.alternatives] == [lexicon.words[i] for i in order[1:]]


def test_skipping_is_exact_on_a_large_lexicon_and_skips_most_words(monkeypatch):
    import cnnctc.decoding.forward as forward
    rng = random.Random(5)
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    words = random_lexicon(rng, alphabet, 3000, 9)
    truths = words[:8]
    logits = regime_logits(np.random.default_rng(5), alphabet, truths, 26, "peaked")
    scored = []
    real = forward.forward

    def counting(*args, **kwargs):
        values = real(*args, **kwargs)
        scored.append(np.count_nonzero(~np.isnan(values)))       # a dropped request is left at NaN
        return values

    monkeypatch.setattr(forward, "forward", counting)
    results = ctc_lexicon_decode(logits, alphabet, words)
    monkeypatch.undo()
    exact = ctc_log_probability(logits, alphabet, words)
    assert [r.text for r in results] == [words[i] for i in exact.argmax(axis=1)]
    assert [r.text for r in results] == truths
    assert sum(scored) < 0.1 * len(words) * len(truths)


def test_lexicon_candidates_within_distance_match_a_plain_levenshtein():
    rng = random.Random(3)
    alphabet = "abcdef"
    words = random_lexicon(rng, alphabet, 500, 8)
    lexicon = Lexicon(words, alphabet)
    for query in ("", "a", "abc", "fedcba", "aaaaaaa", "abcdefabcdef"):
        for distance in (0, 1, 2, 3):
            got = [lexicon.words[i] for i in lexicon.within_distance([alphabet.index(c) for c in query], distance)]
            assert got == [w for w in lexicon.words if levenshtein(w, query) <= distance]


def test_no_candidate_gives_an_empty_reading_with_the_greedy_one():
    logits = regime_logits(np.random.default_rng(0), "abc", ["abc"], 8, "peaked")
    result = ctc_lexicon_decode(logits, "abc", ["cccccc", "b"], max_distance=1)[0]
    assert (result.text, result.confidence, result.greedy) == ("", 0.0, "abc")
    # A word needing more columns than there are has probability 0 and is never chosen.
    result = ctc_lexicon_decode(logits, "abc", ["aaaaa", "cab"])[0]
    assert result.text == "cab" and result.greedy == "abc"
    assert ctc_lexicon_decode(logits, "abc", ["aaaaa"])[0].text == ""


def test_case_free_alphabet_lower_cases_the_lexicon():
    logits = regime_logits(np.random.default_rng(1), "abc", ["cab"], 10, "peaked")
    assert ctc_lexicon_decode(logits, "abc", ["CAB", "Abc"])[0].text == "cab"
    cased = "abcABC"
    logits = regime_logits(np.random.default_rng(1), cased, ["cAb"], 10, "peaked")
    lexicon = Lexicon(["cab", "cAb", "cAb", " CAB "], cased)
    assert lexicon.words == ("cab", "cAb", "CAB")
    assert ctc_lexicon_decode(logits, cased, lexicon)[0].text == "cAb"


def test_out_of_alphabet_words_are_skipped_and_reported_once(caplog):
    logits = regime_logits(np.random.default_rng(2), "abc", ["ab", "ca"], 8, "peaked")
    caplog.set_level(logging.WARNING, logger="cnnctc.decoding")
    decode = make_decoder(lexicon=["ab", "axb", "ca", "héllo", "AB"])
    assert [p.text for p in decode(logits, "abc")] == ["ab", "ca"]
    assert [p.text for p in decode(logits, "abc")] == ["ab", "ca"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 of 4" in warnings[0] and "'axb'" in warnings[0]


def test_a_lexicon_the_alphabet_cannot_write_or_an_empty_one_is_an_error():
    with pytest.raises(LexiconError, match="none of the 2 lexicon words"):
        Lexicon(["xyz", "q"], "abc")
    for empty in ([], ["", "   "]):
        with pytest.raises(LexiconError, match="empty lexicon"):
            Lexicon(empty, "abc")
        with pytest.raises(CnnctcError, match="empty lexicon"):
            make_decoder(lexicon=empty)
    with pytest.raises(DecoderError, match="prepared for the alphabet 'abc'"):
        ctc_lexicon_decode(np.zeros((1, 4, 3)), "xy", Lexicon(["ab"], "abc"))


def test_read_lexicon_strips_lines_and_skips_blank_ones(tmp_path):
    path = tmp_path / "words.txt"
    path.write_bytes("\ufeffhello\r\n\n  wörld  \n\t\nsaint-étienne\nlast".encode("utf-8"))
    assert read_lexicon(path) == ["hello", "wörld", "saint-étienne", "last"]


def test_read_lexicon_errors_are_one_clear_line(tmp_path):
    cases = {
        tmp_path / "missing.txt": "lexicon file not found",
        tmp_path: "is a directory",
    }
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    cases[latin1] = r"is not UTF-8 \(byte 0xe9 at offset 3\)"
    for name, content in (("empty.txt", b""), ("blank.txt", b"\n  \n\t\n")):
        (tmp_path / name).write_bytes(content)
        cases[tmp_path / name] = "empty lexicon"
    for path, message in cases.items():
        with pytest.raises(LexiconError, match=message) as caught:
            read_lexicon(path)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_read_lexicon_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "words.fifo"
    os.mkfifo(fifo)
    outcome = []

    def read():
        try:
            read_lexicon(fifo)
        except LexiconError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=read, daemon=True)   # a hang must fail the test, not stall it
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "read_lexicon blocked on a FIFO"
    assert outcome and "not a regular file" in outcome[0]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_read_lexicon_unreadable_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("word\n")
    path.chmod(0)
    with pytest.raises(LexiconError, match="permission denied"):
        read_lexicon(path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="viterbi"), "unknown decoder 'viterbi'"),
    (dict(name="beam", beam_width=0), "beam_width must be a positive integer"),
    (dict(name="beam", beam_width=2.5), "beam_width must be a positive integer"),
    (dict(name="beam", top_k=0), "top_k must be a positive integer"),
    (dict(name="beam", beam_width=3, top_k=4), r"top_k \(4\) cannot exceed beam_width \(3\)"),
    (dict(top_k=2), "top_k > 1 needs the beam decoder or a lexicon"),
    (dict(max_distance=2), "max_distance needs a lexicon"),
    (dict(lexicon=["ab"], max_distance=-1), "max_distance must be a non-negative integer"),
    (dict(lexicon="words.txt"), "read a file with read_lexicon"),
])
def test_make_decoder_validates_its_arguments(kwargs, message):
    with pytest.raises(DecoderError, match=message) as caught:
        make_decoder(**kwargs)
    assert isinstance(caught.value, CnnctcError) and isinstance(caught.value, ValueError)


def test_made_decoders_return_one_best_prediction_per_image():
    rng = np.random.default_rng(4)
    alphabet = "abcd"
    logits = rng.normal(size=(3, 10, 5)) * 2
    assert make_decoder()(logits, alphabet, with_chars=True) == ctc_greedy_decode(logits, alphabet, with_chars=True)
    ranked = ctc_beam_decode(logits, alphabet, beam_width=6, top_k=3)
    best = make_decoder("beam", beam_width=6, top_k=3)(logits, alphabet)
    assert [p.text for p in best] == [r[0].text for r in ranked]
    assert [p.alternatives for p in best] == [tuple((q.text, q.confidence) for q in r[1:]) for r in ranked]
    words = [r[0].text for r in ranked] + ["dddd", "abca"]
    lexical = make_decoder("beam", lexicon=words, top_k=2)(logits, alphabet)
    assert [p.text for p in lexical] == [p.text for p in best]
    assert all(len(p.alternatives) == 1 and p.greedy is not None for p in lexical)


def test_chars_follow_the_most_probable_alignment():
    logits = regime_logits(np.random.default_rng(6), "abc", ["abba", "c"], 12, "peaked")
    for result in (make_decoder("beam")(logits, "abc", with_chars=True),
                   make_decoder(lexicon=["abba", "c", "ab"])(logits, "abc", with_chars=True)):
        for prediction in result:
            assert "".join(ch for ch, _ in prediction.chars) == prediction.text
            assert all(0.5 < p <= 1 for _, p in prediction.chars)
        assert [p.text for p in result] == ["abba", "c"]
    greedy = ctc_greedy_decode(logits, "abc", with_chars=True)
    beam = ctc_beam_decode(logits, "abc", with_chars=True)
    np.testing.assert_allclose([p for g in greedy for _, p in g.chars], [p for b in beam for _, p in b[0].chars])


def test_empty_batches_and_columns():
    assert ctc_beam_decode(np.zeros((0, 26, 4)), "abc") == []
    assert ctc_lexicon_decode(np.zeros((0, 26, 4)), "abc", ["ab"]) == []
    empty = ctc_beam_decode(np.zeros((2, 0, 4)), "abc")
    assert [[(p.text, p.confidence) for p in r] for r in empty] == [[("", 1.0)]] * 2
    assert ctc_lexicon_decode(np.zeros((1, 0, 4)), "abc", ["ab"])[0].text == ""
    with pytest.raises(DecoderError, match="NaN"):
        ctc_beam_decode(np.full((1, 3, 4), np.nan), "abc")


def test_prediction_keeps_its_greedy_fields():
    assert Prediction("ab", 0.5) == Prediction("ab", 0.5, (), None, ())


def test_on_real_network_outputs_beam_and_lexicon_are_at_least_as_probable_as_greedy():
    """A narrow CNNCTC with random weights, on random inputs: its raw outputs (logits of
    hundreds, which exercise the log-space path) and the outputs of the same network with its
    head scaled down to moderate logits."""
    import mindspore as ms
    from cnnctc.network import CNNCTC
    rng = np.random.default_rng(0)
    net = CNNCTC(num_class=11, output_channel=32)
    net.set_train(False)
    for p in net.get_parameters():
        if "moving_variance" in p.name or "gamma" in p.name:
            value = np.ones(p.shape)
        elif "moving_mean" in p.name or "beta" in p.name:
            value = np.zeros(p.shape)
        else:
            value = rng.normal(0, np.sqrt(2.0 / max(1, int(np.prod(p.shape[1:])))), p.shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))
    images = ms.Tensor(rng.normal(size=(4, 3, 32, 100)).astype(np.float32))
    raw = net(images).asnumpy()
    head = net.Prediction
    scale = 3.0 / float(raw.std())
    head.weight.set_data(ms.Tensor(head.weight.asnumpy() * scale))
    head.bias.set_data(ms.Tensor(head.bias.asnumpy() * scale))
    moderate = net(images).asnumpy()
    alphabet = "0123456789"
    for logits in (raw, moderate):
        log_probs = log_softmax(logits)
        best_path = np.exp(log_probs.max(axis=2).sum(axis=1))
        greedy = [p.text for p in ctc_greedy_decode(logits, alphabet)]
        forward = np.exp(np.diag(ctc_log_probability(logits, alphabet, greedy)))
        assert (forward >= best_path * (1 - 1e-9)).all()
        beam = ctc_beam_decode(logits, alphabet, beam_width=10)
        assert all(r[0].confidence >= f * (1 - 1e-9) for r, f in zip(beam, forward))
        words = greedy + random_lexicon(random.Random(1), alphabet, 200, 8)
        lexical = ctc_lexicon_decode(logits, alphabet, words)
        every = ctc_log_probability(logits, alphabet, list(dict.fromkeys(words)))
        np.testing.assert_allclose([p.confidence for p in lexical], np.exp(every.max(axis=1)), rtol=1e-9)
        assert all(p.confidence >= f * (1 - 1e-9) for p, f in zip(lexical, forward))
    assert moderate.std() < 10 < raw.std()


# ---------------------------------------------------------------------------------------------
# Refused inputs, bounded sizes, argument types (issue 14)

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_decoder_refuses_non_finite_logits(bad):
    logits = np.random.default_rng(0).normal(size=(2, 6, 4))
    logits[1, 3, 2] = bad
    decoders = [lambda: ctc_greedy_decode(logits, "abc"), lambda: ctc_beam_decode(logits, "abc"),
                lambda: ctc_lexicon_decode(logits, "abc", ["ab", "c"]),
                lambda: ctc_log_probability(logits, "abc", ["ab"]),
                lambda: make_decoder()(logits, "abc"), lambda: make_decoder("beam", top_k=2)(logits, "abc"),
                lambda: make_decoder(lexicon=["ab"])(logits, "abc")]
    for decode in decoders:
        with pytest.raises(DecoderError, match="NaN or infinity"):
            decode()


def test_decoder_sizes_are_bounded_and_say_the_bound():
    from cnnctc.decoding import MAX_BEAM_WIDTH
    logits = np.zeros((1, 4, 4))
    for width in (MAX_BEAM_WIDTH + 1, 10 ** 20):
        for call in (lambda: make_decoder("beam", beam_width=width), lambda: ctc_beam_decode(logits, "abc",
                                                                                             beam_width=width)):
            with pytest.raises(DecoderError, match=f"beam_width must be at most {MAX_BEAM_WIDTH}"):
                call()
    with pytest.raises(DecoderError, match="top_k must be at most"):
        ctc_lexicon_decode(logits, "abc", ["ab"], top_k=10 ** 20)
    # The bound itself runs, and a beam wider than the readings there are is the exhaustive one.
    wide = ctc_beam_decode(logits, "abc", beam_width=MAX_BEAM_WIDTH, top_k=5)[0]
    exhaustive = ctc_beam_decode(logits, "abc", beam_width=1 + 3 + 9 + 27 + 81, top_k=5)[0]
    assert [(p.text, p.confidence) for p in wide] == [(p.text, p.confidence) for p in exhaustive]


def test_numpy_integers_count_as_integers_and_bools_do_not():
    logits = regime_logits(np.random.default_rng(3), "abc", ["ab", "ca"], 8, "peaked")
    beam = make_decoder("beam", beam_width=np.int64(4), top_k=np.int32(2))(logits, "abc")
    assert [p.text for p in beam] == ["ab", "ca"] and all(len(p.alternatives) == 1 for p in beam)
    lexical = ctc_lexicon_decode(logits, "abc", ["ab", "ca", "cc"], max_distance=np.int64(1), top_k=np.uint8(2))
    assert [p.text for p in lexical] == ["ab", "ca"]
    for kwargs in (dict(name="beam", beam_width=True), dict(name="beam", top_k=True),
                   dict(lexicon=["ab"], max_distance=False), dict(top_k=np.bool_(True))):
        with pytest.raises(DecoderError, match="integer"):
            make_decoder(**kwargs)


def test_wrong_argument_types_are_errors_that_name_the_argument(tmp_path):
    from cnnctc.decoding import decoder_for
    with pytest.raises(TypeError, match="decoder_options"):
        decoder_for("greedy", [1])
    with pytest.raises(TypeError, match="decoder_options: unknown option 'beam'"):
        decoder_for("beam", {"beam": 3})
    assert decoder_for(None, None) is ctc_greedy_decode
    assert decoder_for("beam", {"beam_width": 3}).beam_width == 3
    with pytest.raises(TypeError, match="alphabet"):
        Lexicon(["ab"], None)
    with pytest.raises(TypeError, match="alphabet"):
        ctc_greedy_decode(np.zeros((1, 3, 4)), None)
    with pytest.raises(TypeError, match="lexicon words must be strings"):
        Lexicon(["ab", 12], "abc")
    with pytest.raises(TypeError, match="lexicon words must be strings"):
        make_decoder(lexicon=["ab", b"cd"])
    with pytest.raises(TypeError, match="lexicon must be a list"):
        make_decoder(lexicon=12)
    with pytest.raises(LexiconError, match="NUL") as caught:
        read_lexicon("a\0b")
    assert "\n" not in str(caught.value)
    with pytest.raises(TypeError, match="path"):
        read_lexicon(None)
    with pytest.raises(TypeError, match="words"):
        ctc_log_probability(np.zeros((1, 3, 4)), "abc", b"ab")


def test_a_single_string_is_one_word():
    logits = np.random.default_rng(1).normal(size=(3, 6, 4))
    one = ctc_log_probability(logits, "abc", "ab")
    assert one.shape == (3, 1)
    np.testing.assert_array_equal(one, ctc_log_probability(logits, "abc", ["ab"]))


def test_long_lexicon_lines_are_skipped_in_bounded_memory(tmp_path, caplog):
    import tracemalloc
    path = tmp_path / "words.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.write("first\n" + "y" * 20_000_000 + "\n" + "z" * 300 + "\nlast\n")
    caplog.set_level(logging.WARNING, logger="cnnctc.decoding")
    tracemalloc.start()
    try:
        words = read_lexicon(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert words == ["first", "last"]
    assert peak < 2_000_000                         # the 20 MB line is never held whole
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipping 2 lexicon lines longer than 256" in warnings[0]
    only_long = tmp_path / "long.txt"
    only_long.write_text("w" * 5000 + "\n")
    with pytest.raises(LexiconError, match="all 1 lines are longer than 256"):
        read_lexicon(only_long)


def test_words_longer_than_any_network_reads_are_skipped_and_reported(caplog):
    caplog.set_level(logging.WARNING, logger="cnnctc.decoding")
    lexicon = Lexicon(["ab", "a" * 2_000_000, "ba"], "ab")
    assert lexicon.words == ("ab", "ba") and lexicon.skipped == 1
    assert any("longer than 256" in r.getMessage() for r in caplog.records)
    with pytest.raises(LexiconError, match="longer than 256"):
        Lexicon(["b" * 300], "ab")


def test_words_that_need_more_columns_than_the_network_has_are_reported_once(caplog):
    logits = regime_logits(np.random.default_rng(4), "abc", ["ab"], 5, "peaked")
    lexicon = Lexicon(["ab", "abcabc", "aab", "aaaaa"], "abc")      # "aaaaa" needs 9 columns
    caplog.set_level(logging.WARNING, logger="cnnctc.decoding")
    for _ in range(2):
        assert ctc_lexicon_decode(logits, "abc", lexicon)[0].text == "ab"
    warnings = [r.getMessage() for r in caplog.records if "columns" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 4 lexicon words need more than the network's 5 columns" in warnings[0]


def test_bounds_hold_where_probabilities_underflow():
    """Logits of thousands: most probabilities are 0 in float64, yet every bound stays an
    upper bound (they are computed on column-scaled probabilities and in log space)."""
    rng = np.random.default_rng(9)
    alphabet = "abc"
    logits = rng.normal(size=(2, 6, 4)) * 1000.0
    truth = [brute_force(logits[b], alphabet) for b in range(2)]
    words = [w for w in sorted(truth[0]) if w]
    lexicon = Lexicon(words, alphabet)
    emissions = Emissions(log_softmax(logits))
    exact = np.array([[truth[b][w] for w in lexicon.words] for b in range(2)])
    first = lexicon._bounds.first(emissions)
    every = np.arange(len(lexicon))
    for b in range(2):
        unbounded = np.full(every.size, np.inf)
        for bounds in (first[b], lexicon._bounds.per_column(emissions, b, every, unbounded)):
            assert (bounds >= exact[b] - 1e-9 * (1 + np.abs(exact[b]))).all()
    result = ctc_lexicon_decode(logits, alphabet, lexicon, top_k=3)
    for b in range(2):
        ranking = sorted(lexicon.words, key=lambda w: (-truth[b][w], lexicon.words.index(w)))
        assert [result[b].text] + [w for w, _ in result[b].alternatives] == ranking[:3]


def test_the_log_space_forward_agrees_with_the_scaled_one():
    from cnnctc.decoding.forward import PrefixTree, forward
    from cnnctc.decoding.common import encode
    rng = np.random.default_rng(11)
    alphabet = "abcd"
    logits = rng.normal(size=(3, 30, 5)) * 2
    words = random_lexicon(random.Random(11), alphabet, 300, 12)
    codes, offsets = encode(words, {c: i for i, c in enumerate(alphabet)})
    tree = PrefixTree(codes, offsets)
    images, sequences = np.repeat(np.arange(3), len(words)), np.tile(np.arange(len(words)), 3)
    log_probs = log_softmax(logits)
    scaled = forward(tree, Emissions(log_probs, log=False), images, sequences)
    in_logs = forward(tree, Emissions(log_probs, log=True), images, sequences)
    finite = np.isfinite(in_logs)
    assert finite.sum() > 500 and (np.isfinite(scaled) == finite).all()
    np.testing.assert_allclose(scaled[finite], in_logs[finite], rtol=1e-10)
    # So many columns that scaled values could overflow: the whole pass runs in log space, exactly.
    long = rng.normal(size=(1, 700, 3))
    assert Emissions(log_softmax(long)).log
    probabilities = ctc_log_probability(long, "ab", ["ab", "ba", "a" * 300])
    assert np.isfinite(probabilities).all()
    short = ctc_log_probability(long[:, :40], "ab", ["ab", "ba"])
    reference = forward(PrefixTree(np.array([0, 1, 1, 0]), np.array([0, 2, 4])), Emissions(log_softmax(long[:, :40]),
                        log=True), np.zeros(2, dtype=np.int64), np.arange(2))
    np.testing.assert_allclose(short[0], reference, rtol=1e-12)
