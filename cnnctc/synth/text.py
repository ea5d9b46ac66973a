"""What a scene image shows: a word from the user's vocabulary, or a mix of dictionary words,
numbers, dates, prices and codes, in upper, lower or title case; and the label that goes with it."""
import os
import re
import unicodedata
from pathlib import Path

from .._checks import MAX_WORD_LENGTH
from .._files import NotRegularFile, open_regular
from ..errors import CnnctcError, shown

__all__ = ["TextSource", "label_for", "dictionary_words", "read_words_file", "word_problem", "SYSTEM_DICTIONARY",
           "MAX_WORDS_FILE_BYTES"]

SYSTEM_DICTIONARY = "/usr/share/dict/words"  # Debian's wamerican (and its siblings)
_SHIPPED = Path(__file__).with_name("words.txt")
MAX_WORDS_FILE_BYTES = 64 * 2**20  # a vocabulary larger than this is refused before it is read
_PLAIN_WORD = re.compile(r"^[A-Za-z]+$")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

# The default mix: kind -> share of the images (dictionary words dominate, as on signs and shop fronts).
DEFAULT_MIX = (("word", 0.78), ("digits", 0.07), ("date", 0.04), ("price", 0.04), ("code", 0.07))
# Case of a dictionary word: signs are often all capitals.
CASES = (("upper", 0.42), ("title", 0.30), ("lower", 0.28))


# Characters that draw nothing although they are not white space (Braille blank, Hangul fillers).
_BLANK = {"\u2800", "\u3164", "\u115f", "\u1160", "\uffa0"}


def _read_lines(path):
    """The lines of a UTF-8 words file (a regular file: a FIFO would block), split at newlines only."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_WORDS_FILE_BYTES:
                raise CnnctcError(f"{path}: {size / 2**20:.0f} MB is too large for a vocabulary (at most "
                                  f"{MAX_WORDS_FILE_BYTES // 2**20} MB); give a shorter list")
            raw = f.read(MAX_WORDS_FILE_BYTES + 1)
    except NotRegularFile as exc:
        raise CnnctcError(f"{path}: {exc.kind}, not a words file; give a text file") from None
    except OSError as exc:
        raise CnnctcError(f"{path}: cannot read the words file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise CnnctcError(f"{path}: line {line} is not UTF-8 text; save the words file as UTF-8") from None
    # Only a newline ends a line (splitlines would also split a word at U+0085, U+2028, a form feed...).
    return [line[:-1] if line.endswith("\r") else line for line in text.removeprefix("\ufeff").split("\n")]


def dictionary_words(path=None, *, max_length=13):
    """Plain letter words of 2..max_length letters: from ``path``, else the system dictionary
    (``/usr/share/dict/words``) when installed, else the list shipped with the package. Returns
    (words, where they came from)."""
    if path is None:
        path = SYSTEM_DICTIONARY if os.path.isfile(SYSTEM_DICTIONARY) else _SHIPPED
    lines = _read_lines(path)
    words = sorted({w for w in (line.strip() for line in lines if not line.startswith("#"))
                    if _PLAIN_WORD.match(w) and 2 <= len(w) <= max_length})
    if not words:
        raise CnnctcError(f"{path}: holds no plain words of 2 to {max_length} letters")
    return words, str(path)


def read_words_file(path):
    """The user's vocabulary: one word (or phrase) per line, blank lines and surrounding spaces ignored."""
    words = []
    for number, line in enumerate(_read_lines(path), 1):
        word = line.strip()
        if not word:
            continue
        problem = word_problem(word)
        if problem:
            raise CnnctcError(f"{path}: line {number} {problem}")
        words.append(word)
    if not words:
        raise CnnctcError(f"{path}: holds no words (one per line)")
    return words


def word_problem(word):
    """What makes ``word`` undrawable as a labelled image (as a phrase), or None."""
    controls = sorted({c for c in word if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")})
    if controls:
        codes = ", ".join(f"U+{ord(c):04X}" for c in controls[:5])
        return (f"holds a control or line-break character ({codes}), which a label cannot hold and no font "
                "draws; remove it")
    if len(word) > MAX_WORD_LENGTH:
        return f"is {len(word):,} symbols long; a word image holds at most {MAX_WORD_LENGTH}"
    if all(c.isspace() or c in _BLANK or unicodedata.category(c) == "Cf" for c in word):
        return f"({shown(word)}) draws nothing: every symbol in it is blank"
    return None


def _pick(rng, table):
    names, weights = zip(*table)
    return names[rng.choice(len(names), p=weights)]


def _cased(word, case):
    return word.upper() if case == "upper" else word.lower() if case == "lower" else word.capitalize()


class TextSource:
    """Draws the text of each image. ``words`` (the user's vocabulary) are drawn as written; with
    none, the default mix of dictionary words (``dictionary``: a words file, default the system's
    or the shipped list), digit strings, dates, prices and codes, at most ``max_length`` symbols."""

    def __init__(self, words=None, *, dictionary=None, max_length=13):
        self.max_length = max_length
        self.user_words = list(words) if words is not None else None
        if self.user_words is None:
            self.dictionary, self.dictionary_source = dictionary_words(dictionary, max_length=max_length)
        else:
            self.dictionary, self.dictionary_source = None, None

    def describe(self):
        if self.user_words is not None:
            return {"words": "the given vocabulary", "count": len(self.user_words)}
        return {"words": "default mix", "dictionary": os.path.basename(self.dictionary_source),
                "dictionary_words": len(self.dictionary), "mix": dict(DEFAULT_MIX)}

    def sample(self, rng):
        """One text to draw (``rng``: a numpy Generator)."""
        if self.user_words is not None:
            return self.user_words[rng.integers(len(self.user_words))]
        kind = _pick(rng, DEFAULT_MIX)
        if kind == "word":
            return _cased(self.dictionary[rng.integers(len(self.dictionary))], _pick(rng, CASES))
        if kind == "digits":
            return "".join(str(d) for d in rng.integers(0, 10, rng.integers(1, 9)))
        if kind == "date":
            d, m, y = rng.integers(1, 29), rng.integers(1, 13), rng.integers(1950, 2031)
            form = rng.integers(4)
            if form == 0:
                return f"{d:02d}/{m:02d}/{y}"
            if form == 1:
                return f"{y}-{m:02d}-{d:02d}"
            if form == 2:
                return f"{d:02d}.{m:02d}.{y % 100:02d}"
            return f"{d}{_cased(_MONTHS[m - 1], _pick(rng, CASES))}{y}"
        if kind == "price":
            value = rng.integers(1, 10 ** rng.integers(1, 5))
            cents = f".{rng.integers(100):02d}" if rng.random() < 0.6 else ""
            return ("$" if rng.random() < 0.7 else "") + f"{value}{cents}" + ("%" if rng.random() < 0.05 else "")
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # code: letters and digits, sometimes with a dash
        head = "".join(letters[i] for i in rng.integers(0, 26, rng.integers(1, 4)))
        tail = "".join(str(d) for d in rng.integers(0, 10, rng.integers(1, 6)))
        text = head + ("-" if rng.random() < 0.4 else "") + tail
        return text if rng.random() < 0.8 else text.lower()


def label_for(text, alphabet=None):
    """The label of an image showing ``text``: the text itself, or, given an ``alphabet``, the text
    reduced to it (lower-cased when the alphabet has no capitals, other symbols dropped: what the
    field scores a 0-9a-z model against, ``Coca-Cola`` -> ``cocacola``)."""
    if alphabet is None:
        return text
    if alphabet == alphabet.lower():
        text = text.lower()
    return "".join(c for c in text if c in alphabet)
