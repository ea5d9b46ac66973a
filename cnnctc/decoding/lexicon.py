"""Lexicons: reading a word file, and a word list prepared once for an alphabet."""
import logging
import os

import numpy as np

from .._files import NotRegularFile, open_regular
from ..errors import shown
from .bounds import WordBounds
from .common import MAX_WORD_LENGTH, DecoderError, LexiconError, check_alphabet, encode, symbol_index
from .forward import PrefixTree

logger = logging.getLogger(__name__)

# A line longer than this many bytes cannot hold a word of MAX_WORD_LENGTH symbols (4 bytes each in
# UTF-8) and some spaces: it is skipped unread.
_LINE_BYTES = 4 * MAX_WORD_LENGTH + 256
_TOO_LONG = (f"longer than {MAX_WORD_LENGTH} characters (a CTC network reads at most one symbol per column: "
             f"cnnctc's have 26)")


def _open_regular(path):
    """A binary file object of the lexicon ``path``, refused (LexiconError) unless it is a regular file."""
    try:
        return open_regular(path)
    except NotRegularFile as exc:
        raise LexiconError(f"lexicon {path} is {exc.kind}, not a regular file: give a text file with one word "
                           "per line") from None
    except FileNotFoundError:
        raise LexiconError(f"lexicon file not found: {path}") from None
    except PermissionError:
        raise LexiconError(f"cannot read lexicon file {path}: permission denied") from None
    except OSError as exc:
        raise LexiconError(f"cannot read lexicon file {path}: {exc.strerror or exc}") from None


def _lines(handle):
    """(offset, line bytes or None when longer than _LINE_BYTES) for each line, in bounded memory."""
    offset = 0
    while True:
        line = handle.readline(_LINE_BYTES + 1)
        if not line:
            return
        start = offset
        offset += len(line)
        if len(line) > _LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):     # the rest of a long line, read and dropped
                line = handle.readline(1 << 16)
                offset += len(line)
            yield start, None
        else:
            yield start, line


def read_lexicon(path):
    """Words from a UTF-8 file, one per line: blank lines skipped, surrounding whitespace stripped.

    Lines longer than MAX_WORD_LENGTH characters are skipped (one warning says how many), read in
    bounded memory. Raises LexiconError (one line) for a missing, unreadable, non-regular,
    non-UTF-8 or empty file.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if (b"\0" if isinstance(path, bytes) else "\0") in path:
        raise LexiconError(f"lexicon path {path!r} contains a NUL character: give the path of a text file")
    handle = _open_regular(path)
    words, too_long, first_long = [], 0, None
    try:
        with handle:
            for number, (offset, line) in enumerate(_lines(handle), start=1):
                if line is not None:
                    try:
                        word = line.decode("utf-8-sig" if offset == 0 else "utf-8").strip()
                    except UnicodeDecodeError as exc:
                        raise LexiconError(f"lexicon file {path} is not UTF-8 (byte {line[exc.start]:#04x} at offset "
                                           f"{offset + exc.start}): save it as UTF-8 text, one word per line") from None
                if line is None or len(word) > MAX_WORD_LENGTH:
                    too_long += 1
                    first_long = first_long or number
                elif word:
                    words.append(word)
    except OSError as exc:
        raise LexiconError(f"cannot read lexicon file {path}: {exc.strerror or exc}") from None
    if too_long:
        if not words:
            raise LexiconError(f"no word in lexicon {path}: all {too_long} lines are {_TOO_LONG}")
        logger.warning("skipping %d lexicon lines %s, e.g. line %d of %s", too_long, _TOO_LONG, first_long, path)
    if not words:
        raise LexiconError(f"empty lexicon: {path} has no words (one word per line)")
    return words


class Lexicon:
    """A word list prepared once for an alphabet, for repeated :func:`ctc_lexicon_decode` calls.

    Words are stripped, lower-cased when the alphabet is case-free (equal to its own
    ``.lower()``), and deduplicated in first-seen order. Words with a symbol outside the
    alphabet, or longer than MAX_WORD_LENGTH symbols, are skipped and reported once each, as a
    logging warning. An empty list, or one with no word the alphabet can write, raises
    LexiconError; ``words`` that is not a list of strings, or an alphabet that is not a string,
    TypeError.
    """

    def __init__(self, words, alphabet):
        if isinstance(words, (str, bytes, bytearray)):
            raise TypeError("Lexicon takes a list of words; read a file with read_lexicon(path)")
        try:
            words = iter(words)
        except TypeError:
            raise TypeError(f"words must be a list of strings, got {type(words).__name__}") from None
        check_alphabet(alphabet)
        self.alphabet = alphabet
        fold = alphabet == alphabet.lower()
        symbols = set(alphabet)
        seen, kept, outside, too_long = set(), [], [], []
        for word in words:
            if not isinstance(word, str):
                raise TypeError(f"lexicon words must be strings, got {shown(word)} ({type(word).__name__})")
            word = word.strip()
            if fold:
                word = word.lower()
            if not word or word in seen:
                continue
            seen.add(word)
            if len(word) > MAX_WORD_LENGTH:
                too_long.append(word)
            else:
                (kept if symbols.issuperset(word) else outside).append(word)
        if not seen:
            raise LexiconError("empty lexicon: give at least one word")
        if not kept:
            if too_long and not outside:
                raise LexiconError(f"all {len(too_long)} lexicon words are {_TOO_LONG}")
            raise LexiconError(f"none of the {len(outside) + len(too_long)} lexicon words can be written with the "
                               f"alphabet {shown(alphabet)} (e.g. {shown((outside or too_long)[0])}): check the "
                               "lexicon and the model")
        if outside:
            logger.warning("skipping %d of %d lexicon words with symbols outside the alphabet (e.g. %s)",
                           len(outside), len(seen), shown(outside[0]))
        if too_long:
            logger.warning("skipping %d of %d lexicon words %s", len(too_long), len(seen), _TOO_LONG)
        self.words = tuple(kept)
        self.skipped = len(outside) + len(too_long)
        index = symbol_index(alphabet)
        self._codes, self._offsets = encode(kept, index)
        self._lengths = np.diff(self._offsets)
        self._tree = PrefixTree(self._codes, self._offsets)
        self._need = self._tree.need                      # columns a word needs at least
        self._word_bounds = None
        # The words ordered by length, for the edit-distance filter.
        self._by_length = np.argsort(self._lengths, kind="stable")
        self._length_starts = np.searchsorted(self._lengths[self._by_length], np.arange(int(self._lengths.max()) + 2))
        self._unfit_reported = set()

    def __len__(self):
        return len(self.words)

    def __iter__(self):
        return iter(self.words)

    def __repr__(self):
        return f"<Lexicon of {len(self.words)} words ({self.skipped} skipped)>"

    @property
    def _bounds(self):
        """The symbol tables of the upper bounds (made on first use: a short list is scored whole)."""
        if self._word_bounds is None:
            self._word_bounds = WordBounds(self._codes, self._offsets, self._need - self._lengths,
                                           len(self.alphabet) + 1)
        return self._word_bounds

    def fitting(self, columns):
        """Indices of the words that fit in ``columns`` columns (a word of L symbols with r
        adjacent repeats needs L + r); the others are reported once per column count."""
        fits = np.flatnonzero(self._need <= columns)
        if fits.size < len(self.words) and columns not in self._unfit_reported:
            self._unfit_reported.add(columns)
            example = self.words[int(np.flatnonzero(self._need > columns)[0])]
            logger.warning("%d of %d lexicon words need more than the network's %d columns and can never be read "
                           "(e.g. %s)", len(self.words) - fits.size, len(self.words), columns, shown(example))
        return fits

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
        chosen = self._by_length[start:stop]
        lengths = self._lengths[chosen]
        position = np.arange(high)[:, None]
        inside = position < lengths[None, :]
        flat = np.minimum(self._offsets[chosen][None, :] + position, self._codes.size - 1)
        words = np.where(inside, self._codes[flat], -1)                       # (high, n): codes, -1 past the end
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
        distance = row[lengths, np.arange(stop - start)]
        return np.sort(chosen[distance <= max_distance])


def check_lexicon(lexicon, alphabet):
    """``lexicon`` as a Lexicon for ``alphabet`` (a list of words is prepared here)."""
    if isinstance(lexicon, Lexicon):
        if lexicon.alphabet != alphabet:
            raise DecoderError(f"the lexicon was prepared for the alphabet {shown(lexicon.alphabet)}, not "
                               f"{shown(alphabet)}")
        return lexicon
    return Lexicon(lexicon, alphabet)

