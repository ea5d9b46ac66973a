"""What every command shares: the parser class, argument types and options, the model a command names."""
import argparse
import contextlib
import dataclasses
import math
import sys
import textwrap
import unicodedata

from .._streams import is_terminal

from ..errors import SHOWN_SYMBOLS, shown

__all__ = ["Command", "Parser", "alphabet_arg", "positive_int", "non_negative_int", "int_at_least", "finite_positive_float",
           "seed_arg", "model_arg", "cache_arg", "device_arg", "runtime_arg", "entry", "manifest_of", "progress_bar"]

@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its name, what it does (help), its arguments, the function it runs, examples."""
    name: str
    help: str
    arguments: object          # function(parser) adding the command's own arguments
    run: object                # function(args) -> exit status
    examples: tuple = ()
    uses_manifest: bool = True  # whether --manifest means anything for it


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose options may come between positional arguments (``predict a.png
    --checkpoint x b.png``), as users of other command lines expect.

    :meth:`add_check` adds a check of the parsed options together (an option that means nothing
    without another): what it returns is a usage error, exit 2 with the usage, as argparse's own.
    """

    _intermixing = False

    def _print_message(self, message, file=None):
        """argparse's output (--help, --version, usage errors) to ``file`` only. argparse writes it to
        stderr when stdout is closed (``>&-``): help nobody asked to see there. A stream that cannot take
        it (closed, /dev/full, a closed pipe) loses it, and the exit status stays argparse's (0 for
        --help and --version): a full or closed stdout is not an error of the command line."""
        if not message or file is None:
            return
        try:
            file.write(message)
            file.flush()
        except (AttributeError, OSError, ValueError):
            if file is sys.stdout:   # what is still buffered would fail again at exit, with a traceback
                from ._stdout import silence_stdout
                silence_stdout()
                with contextlib.suppress(OSError, ValueError):
                    file.flush()

    def error(self, message):
        """argparse's usage error, with every long value of the command line shortened as :func:`shown`
        does (argparse quotes an invalid choice or number whole: a 5000-symbol value was one huge line)."""
        values = set()
        for arg in getattr(self, "_given", ()):
            values.update(part for part in (arg, arg.partition("=")[2]) if len(part) > SHOWN_SYMBOLS)
        for value in sorted(values, key=len, reverse=True):
            message = message.replace(repr(value), shown(value)).replace(value, shown(value))
        super().error(message)

    def add_check(self, check):
        """``check(namespace)`` -> None, or the usage error's message; run once the command line is parsed."""
        self._checks = [*getattr(self, "_checks", ()), check]

    def parse_known_args(self, args=None, namespace=None):
        if not self._intermixing:
            self._given = [a for a in (sys.argv[1:] if args is None else args) if isinstance(a, str)]
        positionals = [a for a in self._actions if not a.option_strings]
        if self._intermixing or not positionals or any(a.nargs in (argparse.PARSER, argparse.REMAINDER)
                                                       for a in positionals):
            parsed = super().parse_known_args(args, namespace)
        else:
            self._intermixing = True
            try:
                parsed = self.parse_known_intermixed_args(args, namespace)
            finally:
                self._intermixing = False
        if not self._intermixing:
            for check in getattr(self, "_checks", ()):
                problem = check(parsed[0])
                if problem:
                    self.error(problem)
        return parsed


def examples_epilog(examples):
    """The ``--help`` epilog: 'examples:' and one indented command per line."""
    if not examples:
        return None
    return "examples:\n" + "\n".join(textwrap.indent(line, "  ") for line in examples)


def int_at_least(low, high=None, why=None):
    """An argparse type: a whole number from ``low`` (to ``high``, with the reason for that bound)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {shown(text)}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            reason = f" ({why})" if why else ""
            raise argparse.ArgumentTypeError(f"must be at most {high}{reason}, got {value}")
        return value
    return parse


def alphabet_arg(when_empty="", *, visible=False):
    """An argparse type: an alphabet that passes the one alphabet check; ``when_empty`` ends the hint for
    ''. With ``visible``, white space alone is refused too (nothing to draw)."""
    def parse(text):
        from ..alphabet import alphabet_problem
        problem = alphabet_problem(text)
        if problem:
            raise argparse.ArgumentTypeError(problem + (f"; give the symbols{when_empty}" if not text else ""))
        if visible and not text.strip():
            raise argparse.ArgumentTypeError(f"holds only white space; give the symbols{when_empty}")
        if visible and any(unicodedata.category(c) == "Cf" for c in text):
            raise argparse.ArgumentTypeError("holds invisible format characters (zero-width, soft hyphen, "
                                             "direction marks) that an image would not show; leave them out")
        return text
    return parse


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)
seed_arg = int_at_least(0, 2 ** 32 - 1)


def finite_positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {shown(text)}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def model_arg(p):
    p.add_argument("--model", metavar="UID", help="uid of a registered model (default: "
                   "mindspore/1.3/cnnctc_mjstiiit; cnnctc/synth-scene and cnnctc/mini-synth are shipped in the "
                   "package and read offline; `cnnctc list` shows all)")


def cache_arg(p):
    p.add_argument("--cache-dir", help="cache root shared with MindSpore Hub (default: CNNCTC_CACHE_DIR, "
                   "else ~/.mscache)")


def _device(text):
    from .._checks import device_name
    from ..errors import CnnctcError
    try:
        return device_name(text)
    except CnnctcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device_arg(p):
    p.add_argument("--device-target", type=_device, metavar="{Ascend,GPU,CPU}",
                   help="the device to run on (default: the first available, or the one you chose in MindSpore)")


def runtime_arg(p):
    p.add_argument("--runtime", choices=("auto", "mindspore", "onnxruntime"), default="auto",
                   help="for a checkpoint or hub uid: auto (default) runs onnxruntime on a CPU-only machine "
                   "with the onnx extra, from an ONNX export made once and kept in the cache, else MindSpore")


def entry(args):
    """The registry entry the command works on: --model UID, --manifest FILE, or the default."""
    from ..registry import get_model
    return get_model(getattr(args, "model", None), manifest=getattr(args, "manifest", None))


def manifest_of(args):
    return entry(args).manifest


class _NoBar:
    def update(self, n):
        pass

    def write(self, line, file):
        if file is None:   # a closed stderr: print(file=None) would put the line among the results
            return
        if file is not sys.stderr:
            print(line, file=file)   # results: a stdout that cannot take them is the caller's error
            return
        with contextlib.suppress(OSError, ValueError):   # a message on a stderr that cannot take it is lost
            print(line, file=file, flush=True)


def progress_bar(total, enabled):
    """A tqdm bar on stderr when ``enabled``, else an object with the same update/write."""
    if not enabled or not is_terminal(sys.stderr):
        return contextlib.nullcontext(_NoBar())
    from tqdm import tqdm
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)
