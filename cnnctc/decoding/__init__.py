"""CTC decoding with confidences: greedy, prefix beam search, and lexicon-constrained.

The blank is the last class (MindSpore's CTCLoss convention). Pure numpy. One module each:

- :mod:`.greedy`: :func:`ctc_greedy_decode`, argmax per column, merge repeats, drop blanks (the default).
- :mod:`.beam`: :func:`ctc_beam_decode`, CTC prefix beam search; confidences are sequence
  probabilities, summed over all alignments of a reading.
- :mod:`.forward`: the forward algorithm over a prefix tree of words, exact to rounding at any
  range of the logits; :func:`ctc_log_probability`.
- :mod:`.lexicon`: :func:`read_lexicon` and :class:`Lexicon` (a word list prepared for an alphabet).
- :mod:`.bounds`: upper bounds on a word's probability, which let the lexicon decoder skip words.
- :mod:`.lexicon_decode`: :func:`ctc_lexicon_decode`, the word of a lexicon with the highest
  exact CTC probability, optionally among the words within an edit distance of the greedy reading.
- :mod:`.factory`: :func:`make_decoder`, the decoder as one parameter,
  ``decode(logits, alphabet, with_chars=...)``.

Every decoder refuses NaN or infinite logits (DecoderError).
"""
from .beam import ctc_beam_decode
from .common import (MAX_BEAM_WIDTH, MAX_TOP_K, MAX_WORD_LENGTH, DecoderError, LexiconError, Prediction,
                     softmax)
from .factory import DECODERS, Decoder, decoder_for, make_decoder
from .forward import ctc_log_probability
from .greedy import ctc_greedy_decode
from .lexicon import Lexicon, read_lexicon
from .lexicon_decode import ctc_lexicon_decode

__all__ = ["Prediction", "ctc_greedy_decode", "softmax", "ctc_beam_decode", "ctc_lexicon_decode",
           "ctc_log_probability", "Lexicon", "read_lexicon", "make_decoder", "decoder_for", "Decoder",
           "DecoderError", "LexiconError", "DECODERS", "MAX_BEAM_WIDTH", "MAX_TOP_K", "MAX_WORD_LENGTH"]
