"""The one check of an alphabet (the symbols of classes 0..C-2), used by every reader of one:
manifests, ``--alphabet``, a checkpoint's saved alphabet and fine-tuning.

A symbol is one character that can stand in a label and in one line of output: no control
character (tab, newline, NUL, ESC, DEL, C1 controls), no line or paragraph separator, no lone
surrogate; a space is a symbol like any other. No MindSpore import here.
"""
import unicodedata

__all__ = ["alphabet_problem", "check_alphabet"]

# Cc: control characters; Cs: lone surrogates; Zl, Zp: U+2028 and U+2029, which end a line.
_REFUSED_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}


def _shown(symbol):
    return repr(symbol) if symbol.isprintable() else ascii(symbol)


def alphabet_problem(alphabet):
    """What is wrong with ``alphabet`` as a phrase ("is empty", "repeats 'a'", ...), or None when it is fine."""
    if not isinstance(alphabet, str):
        return f"must be a string of symbols, got {type(alphabet).__name__}"
    if not alphabet:
        return "is empty"
    refused = sorted({c for c in alphabet if unicodedata.category(c) in _REFUSED_CATEGORIES})
    if refused:
        shown = ", ".join(_shown(c) for c in refused[:5]) + (", ..." if len(refused) > 5 else "")
        return (f"holds control or line-break characters ({shown}); a symbol must be printable, so that "
                "labels and one-line outputs (TSV, JSON lines) stay intact")
    seen, repeated = set(), []
    for symbol in alphabet:
        if symbol in seen and symbol not in repeated:
            repeated.append(symbol)
        seen.add(symbol)
    if repeated:
        shown = ", ".join(_shown(s) for s in repeated[:5]) + (", ..." if len(repeated) > 5 else "")
        return f"repeats {shown}; every symbol must name one class"
    return None


def check_alphabet(alphabet, what="alphabet", error=ValueError, *, advice=""):
    """Return ``alphabet`` if it is usable; else raise ``error`` with "<what> <problem>[; <advice>]".

    With the default ``error`` a value that is not a string raises TypeError instead.
    """
    problem = alphabet_problem(alphabet)
    if problem is None:
        return alphabet
    message = f"{what} {problem}" + (f"; {advice}" if advice else "")
    raise (TypeError if error is ValueError and not isinstance(alphabet, str) else error)(message)
