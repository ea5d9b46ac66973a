"""The decoder as one parameter: ``decode(logits, alphabet, with_chars=...)`` made from a name and options."""
import collections.abc
import dataclasses

from .beam import check_beam_arguments, ctc_beam_decode
from ..errors import shown
from .common import MAX_TOP_K, DecoderError, LexiconError, check_count
from .greedy import ctc_greedy_decode
from .lexicon import Lexicon, check_lexicon
from .lexicon_decode import ctc_lexicon_decode

DECODERS = ("greedy", "beam")
_OPTIONS = ("beam_width", "top_k", "lexicon", "max_distance")


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
            return check_lexicon(self.lexicon, alphabet)
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

    ``name``: "greedy" or "beam" (prefix beam search of ``beam_width``, at most MAX_BEAM_WIDTH).
    A ``lexicon`` (list of words or a prepared :class:`Lexicon`) makes it the lexicon decoder,
    optionally limited to words within ``max_distance`` edits of the greedy reading. ``top_k >
    1`` (beam or lexicon) puts the runner-ups in ``Prediction.alternatives``. Invalid arguments
    raise DecoderError (a wrong type of lexicon: TypeError).
    """
    if not isinstance(name, str) or name not in DECODERS:
        raise DecoderError(f"unknown decoder {shown(name)}: use one of {', '.join(DECODERS)}")
    top_k = check_count("top_k", top_k, largest=MAX_TOP_K)
    if max_distance is not None:
        if lexicon is None:
            raise DecoderError("max_distance needs a lexicon")
        max_distance = check_count("max_distance", max_distance, smallest=0)
    if lexicon is not None:
        if isinstance(lexicon, (str, bytes, bytearray)):
            raise DecoderError("lexicon must be a list of words or a Lexicon; read a file with read_lexicon(path)")
        if not isinstance(lexicon, Lexicon):
            if not isinstance(lexicon, collections.abc.Iterable):
                raise TypeError(f"lexicon must be a list of words or a Lexicon, got {type(lexicon).__name__}")
            lexicon = tuple(lexicon)
            for word in lexicon:
                if not isinstance(word, str):
                    raise TypeError(f"lexicon words must be strings, got {shown(word)} ({type(word).__name__})")
            if not any(word.strip() for word in lexicon):
                raise LexiconError("empty lexicon: give at least one word")
        return Decoder("lexicon", None, top_k, lexicon, max_distance)
    if name == "beam":
        beam_width, top_k = check_beam_arguments(beam_width, top_k)
        return Decoder("beam", beam_width, top_k, None, None)
    if top_k != 1:
        raise DecoderError("top_k > 1 needs the beam decoder or a lexicon: greedy decoding has one reading")
    return Decoder("greedy", None, 1, None, None)


def decoder_for(decoder, options):
    """The decoder a Recognizer uses: a callable as it is, else ``make_decoder(decoder, **options)``
    (plain greedy decoding when nothing asks for more). ``options`` must be a mapping of
    make_decoder's keywords; anything else is a TypeError naming ``decoder_options``."""
    if options is None:
        options = {}
    if not isinstance(options, collections.abc.Mapping):
        raise TypeError(f"decoder_options must be a dict of {', '.join(_OPTIONS)}, got {type(options).__name__}")
    unknown = sorted(str(key) for key in options if key not in _OPTIONS)
    if unknown:
        raise TypeError(f"decoder_options: unknown option {shown(unknown[0])}; use {', '.join(_OPTIONS)}")
    if callable(decoder):
        return decoder
    if decoder in (None, "greedy") and options.get("lexicon") is None and options.get("top_k", 1) == 1 \
            and options.get("max_distance") is None:
        return ctc_greedy_decode
    return make_decoder("greedy" if decoder is None else decoder, **options)
