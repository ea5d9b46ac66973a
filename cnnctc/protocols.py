"""The evaluation protocols of the field's references, rule by rule.

A protocol decides which samples of an evaluation set are scored, what truth a prediction is
compared with, what an unreadable image counts as, and which form of 1 - normalized edit
distance is averaged. Each rule below is cited to the reference's own lines:

- ``zoo``: the MindSpore model zoo, branch r1.3, ``official/cv/cnnctc`` (``eval.py``,
  ``src/dataset.py``, ``src/util.py``, ``default_config.yaml``, ``preprocess.py`` and
  ``postprocess.py`` for the Ascend-310 path); ``src/dataset.py`` is the same through r1.10.
  How the hub card's 85.97% was measured.
- ``dtrb``: clovaai/deep-text-recognition-benchmark (Baek et al. 2019), ``test.py`` and
  ``dataset.py`` at master (e2117f2), run with its defaults.
- ``dtrb-unfiltered``: the same with ``--data_filtering_off``, how DTRB scores IC15_2077 and CUTE80.

Pure Python: no MindSpore, no numpy.
"""
import dataclasses

from ._checks import MAX_LABEL_LENGTH
from .errors import CnnctcError, shown

__all__ = ["BENCHMARK_ALPHABET", "UNREADABLE_LABEL", "PROTOCOLS", "DEFAULT_PROTOCOL", "Protocol", "Scoring", "get_protocol",
           "edit_distance", "icdar2019_similarity", "dtrb_similarity"]

# Both references' character set: zoo default_config.yaml line 16 (CHARACTER), DTRB test.py
# line 256 (--character default).
BENCHMARK_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"

# Both references read an image that does not decode as a black RGB image of the network's input
# size, Image.new('RGB', (imgW, imgH)) -- zoo src/dataset.py lines 98-102 (IMG_W 100, IMG_H 32:
# default_config.yaml lines 25-26), DTRB dataset.py lines 200-207 (imgW 100, imgH 32: test.py lines
# 253-254) -- and score it against this label (zoo line 102, DTRB line 207):
UNREADABLE_LABEL = "[dummy_label]"


def edit_distance(a, b):
    """Levenshtein distance."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def icdar2019_similarity(truth, prediction):
    """1 - N.E.D. in the ICDAR 2019 form: 1 - ED / max(len(truth), len(prediction)); 1 when both
    are empty (they are equal). The zoo computes no edit distance; this is the field's form."""
    longest = max(len(truth), len(prediction))
    return 1.0 - edit_distance(prediction, truth) / longest if longest else 1.0


def dtrb_similarity(truth, prediction):
    """1 - N.E.D. as DTRB's test.py lines 168-174 compute it: 0 when the truth or the prediction
    is empty (even when both are), else 1 - ED / max(len(truth), len(prediction))."""
    if not truth or not prediction:
        return 0.0
    return 1.0 - edit_distance(prediction, truth) / max(len(truth), len(prediction))


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One reference's rules (see the module docstring for the sources)."""
    name: str
    max_length: int        # longest raw label kept; None keeps every length
    filtered: bool         # True: skip a label with a symbol outside the alphabet; False: keep it
    strips_truth: bool     # remove the symbols outside the alphabet from the (lower-cased) truth
    similarity: object     # the 1 - N.E.D. of one sample: (truth, prediction) -> float
    description: str

    def with_max_length(self, max_length):
        """This protocol with another longest label (``--max-length``); None keeps the protocol's."""
        if max_length is None:
            return self
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= MAX_LABEL_LENGTH:
            raise ValueError(f"max_length must be a whole number from 1 to {MAX_LABEL_LENGTH}, got {shown(max_length)}")
        return dataclasses.replace(self, max_length=max_length)

    def for_alphabet(self, alphabet):
        """The rules applied to a model that reads ``alphabet``."""
        return Scoring(self, alphabet)


_PROTOCOLS = {
    # zoo r1.3 src/dataset.py IIIT_Generator_batch:
    #   line 202  max_len = int((26 + 1) // 2)             -> 13
    #   line 224  if len(label) > max_len: continue         -> on the raw label, so "" is kept
    #   lines 227-233  a symbol of label.lower() not in config.CHARACTER -> skipped
    #   line 104  label = label.lower() (get_img_from_lmdb) -> the truth; eval.py line 82
    #             reverse_encode(encode(truth)) gives it back unchanged; nothing is stripped
    #   eval.py lines 95-98  pred == label, pred greedy-decoded (lines 76-78); no edit distance
    #   an unreadable image: src/dataset.py lines 98-102 give the black image and '[dummy_label]';
    #             eval.py then stops with a KeyError in converter.encode (util.py line 64: '[' has no
    #             class), the Ascend-310 path scores it (preprocess.py lines 35-44, postprocess.py
    #             lines 35-48): never equal to a reading, so wrong
    #   eval.py also scores only full batches of TEST_BATCH_SIZE 256 (src/dataset.py lines 249-264
    #             yield a batch only when it is full; default_config.yaml line 48): evaluate's drop_last
    "zoo": Protocol("zoo", 13, filtered=True, strips_truth=False, similarity=icdar2019_similarity,
                    description="the model zoo's r1.3 eval: labels of at most 13 symbols, all in the alphabet "
                                "(empty ones too), truth lower-cased; 1-N.E.D. in the ICDAR 2019 form"),
    # DTRB dataset.py LmdbDataset.__init__, filtering on:
    #   line 163  if len(label) > self.opt.batch_max_length: continue  -> raw label; default 25 (test.py
    #             line 252)
    #   lines 170-172  re.search('[^' + character + ']', label.lower()) -> skipped
    #   __getitem__ lines 209-214  label.lower() (not --sensitive), then re.sub of the symbols outside
    #             the character set (nothing left to remove once filtered)
    #   test.py line 156  pred == gt; lines 168-174 the edit distance (dtrb_similarity); lines 184-185
    #             averaged over every sample the loader gives (no drop_last: lines 47-51, 231-235)
    "dtrb": Protocol("dtrb", 25, filtered=True, strips_truth=True, similarity=dtrb_similarity,
                     description="DTRB's test.py: labels of at most 25 symbols, all in the alphabet (empty ones "
                                 "too), truth lower-cased; DTRB's 1-N.E.D. (0 when either side is empty)"),
    # DTRB with --data_filtering_off: dataset.py lines 144-146 keep every index; the truth is
    # lower-cased and stripped of the symbols outside the alphabet (lines 209-214). (DTRB itself then
    # fails in CTCLabelConverter.encode, utils.py lines 32-36, on a stripped truth longer than
    # --batch_max_length; here such a label is simply scored.)
    "dtrb-unfiltered": Protocol("dtrb-unfiltered", None, filtered=False, strips_truth=True,
                                similarity=dtrb_similarity,
                                description="DTRB's test.py --data_filtering_off: every label, truth lower-cased "
                                            "with the symbols outside the alphabet removed; DTRB's 1-N.E.D."),
}
PROTOCOLS = tuple(_PROTOCOLS)
DEFAULT_PROTOCOL = "zoo"


def get_protocol(name=DEFAULT_PROTOCOL, max_length=None):
    """The :class:`Protocol` called ``name`` (``zoo``, ``dtrb`` or ``dtrb-unfiltered``), with
    ``max_length`` as its longest kept label when given."""
    if isinstance(name, Protocol):
        return name.with_max_length(max_length)
    if not isinstance(name, str):
        raise TypeError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {type(name).__name__}")
    if name not in _PROTOCOLS:
        raise CnnctcError(f"unknown evaluation protocol {shown(name)}; use one of {', '.join(PROTOCOLS)}")
    return _PROTOCOLS[name].with_max_length(max_length)


class Scoring:
    """A protocol's rules for one model's alphabet.

    The references take their character set as a setting (the zoo's CHARACTER, DTRB's
    --character): the model's alphabet plays that part. A model whose alphabet is wider than the
    benchmark's 36 symbols (capitals, punctuation) is scored as DTRB scores its --sensitive
    models (test.py lines 147-154): the benchmark's symbols decide what is kept, and prediction
    and truth are both lower-cased and reduced to 0-9a-z before they are compared. An alphabet
    with capitals that does not hold the benchmark's symbols (a user's own) keeps the labels'
    case, as DTRB's --sensitive does (dataset.py lines 209-210).
    """

    def __init__(self, protocol, alphabet):
        self.protocol = protocol
        self.alphabet = alphabet
        self.reduces = set(BENCHMARK_ALPHABET) < set(alphabet)
        self.symbols = frozenset(BENCHMARK_ALPHABET if self.reduces else alphabet)
        self.lowercase = self.reduces or alphabet == alphabet.lower()

    def _fold(self, text):
        return text.lower() if self.lowercase else text

    def _strip(self, text):
        return "".join(c for c in text if c in self.symbols)

    def truth(self, label):
        """(the truth compared, None) for a kept raw label, (None, why it is skipped) otherwise."""
        limit = self.protocol.max_length
        if limit is not None and len(label) > limit:
            return None, f"longer than {limit} symbols"
        folded = self._fold(label)
        if self.protocol.filtered and any(c not in self.symbols for c in folded):
            return None, "a symbol outside the alphabet"
        return self._compared_truth(folded), None

    def _compared_truth(self, folded):
        if self.protocol.strips_truth or self.reduces:
            return self._strip(folded)
        return folded

    def unreadable_truth(self):
        """The truth an unreadable image (scored as a black image, and always wrong) is compared
        with: the zoo's '[dummy_label]', DTRB's 'dummylabel'.

        DTRB strips '[dummy_label]' with its character set (dataset.py lines 207-214), which with
        its default 0-9a-z gives 'dummylabel'; with a narrower alphabet (digits) it would give ''
        and an empty reading would count as right. The benchmark's set is used whatever the
        alphabet, and evaluate counts the sample as wrong: the dummy label's purpose in both.
        """
        label = UNREADABLE_LABEL.lower()
        if self.protocol.strips_truth or self.reduces:
            return "".join(c for c in label if c in BENCHMARK_ALPHABET)
        return label

    def prediction(self, text):
        """The prediction as compared: as decoded, or lower-cased and reduced for a wide alphabet."""
        return self._strip(text.lower()) if self.reduces else text

    def similarity(self, truth, prediction):
        """1 - N.E.D. of one sample in this protocol's form."""
        return self.protocol.similarity(truth, prediction)
