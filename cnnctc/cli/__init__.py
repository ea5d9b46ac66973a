"""The ``cnnctc`` command: each subcommand, beside its arguments, parses them and calls the Python API.

``models`` (info, list, download, verify, hub-install, slim), ``reading`` (predict, eval),
``datasets`` (render, make-lmdb), ``training`` (finetune), ``deploy`` (export, quantize).
"""
import argparse
import contextlib
import logging
import os
import shutil
import sys

from ..errors import CnnctcError
from . import datasets, deploy, models, reading, training
from ._args import Parser, examples_epilog
from ._stdout import output_error, silence_stdout, stdout_usable

__all__ = ["main", "console_main", "run_captured", "build_parser", "COMMANDS"]

log = logging.getLogger("cnnctc")

# In the order --help lists them: the models, reading words, data, training, deployment.
_ORDER = ("info", "list", "download", "verify", "hub-install", "predict", "render", "make-lmdb", "finetune", "eval",
          "slim", "export", "quantize")
_BY_NAME = {command.name: command for module in (models, reading, datasets, training, deploy)
            for command in module.COMMANDS}
COMMANDS = [_BY_NAME[name] for name in _ORDER]

# What to ask for less of when a command runs out of memory.
_MEMORY_HINTS = {"predict": "a smaller --batch-size", "eval": "a smaller --batch-size",
                 "finetune": "a smaller --batch-size", "render": "a smaller --count",
                 "quantize": "a smaller --max-images", "make-lmdb": "smaller images"}


def _common_options(parser, *, manifest=True, after_command=False):
    # After the command name the options default to SUPPRESS, so that they do not reset what
    # was given before it.
    default = {"default": argparse.SUPPRESS} if after_command else {}
    if manifest:
        parser.add_argument("--manifest", **default, help="manifest JSON naming the checkpoint (default: "
                            "CNNCTC_MANIFEST, else the hub asset)")
    parser.add_argument("-q", "--quiet", action="store_true", **default, help="no progress bars or info messages")


def build_parser():
    from .. import __version__
    parser = Parser(   # its --help and --version cope with a closed or full stdout
        prog="cnnctc", description="CNN-CTC scene-text recognition for MindSpore (hub model "
        "mindspore/1.3/cnnctc_mjstiiit): fetch and verify the checkpoint, read word images, fine-tune.",
        epilog=examples_epilog(("cnnctc predict --model cnnctc/synth-scene word.png", "cnnctc COMMAND --help")),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(parser)
    parser.add_argument("--version", action="version", version=f"cnnctc {__version__}")
    parents = {}
    for uses_manifest in (True, False):
        parents[uses_manifest] = argparse.ArgumentParser(add_help=False)
        _common_options(parents[uses_manifest], manifest=uses_manifest, after_command=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help,
                           parents=[parents[command.uses_manifest]], epilog=examples_epilog(command.examples),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.arguments(p)
        p.set_defaults(func=command.run, uses_manifest=command.uses_manifest)
    return parser


_MINDSPORE_DUMP_SETTINGS = ("MS_DEV_SAVE_GRAPHS", "MS_DEV_SAVE_GRAPHS_PATH", "CNNCTC_DEBUG")


@contextlib.contextmanager
def _no_ir_dump_left():
    """MindSpore writes ``rank_0/om/analyze_fail.ir`` into the working folder when a graph fails to
    compile (an interrupted compile too), whatever its save-graphs path says. A command that made
    that folder removes it again (only when it holds nothing else), unless MindSpore's dumps or
    debug output were asked for (``_MINDSPORE_DUMP_SETTINGS``)."""
    folder = os.path.abspath("rank_0")
    if any(os.environ.get(name) for name in _MINDSPORE_DUMP_SETTINGS) or os.path.lexists(folder):
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if [(root[len(folder):], sorted(files)) for root, _, files in os.walk(folder)] == [
                    ("", []), ("/om", ["analyze_fail.ir"])]:
                shutil.rmtree(folder)


def _stop_now():
    """A second Ctrl-C (or SIGTERM) while the first one's clean-up runs: stop at once, as it asks."""
    from .._native import stderr_descriptor
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    with contextlib.suppress(OSError):
        os.write(stderr_descriptor(), b"cnnctc: interrupted\n")
    os._exit(130)


def console_main():
    """The `cnnctc` command: :func:`main`, then an interpreter shutdown that a Ctrl-C cannot turn into
    death by the signal (MindSpore's clean-up takes a moment; the command's work and status are done)."""
    import signal
    status = main()
    # Whatever Python's view of the handler (MindSpore installs a native one, which answers Ctrl-C
    # with SIGTERM): from here a Ctrl-C is ignored, and so is the SIGTERM it may have set off.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    return status


def main(argv=None):
    from .._streams import fill_closed_descriptors
    stdout_open = stdout_usable()   # before a closed descriptor 1 is filled
    fill_closed_descriptors()   # 2>&-: MindSpore's lines must not go into the next file opened, nor ours to stdout
    for stream in (sys.stdout, sys.stderr):  # file names that are not valid UTF-8 still print
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.manifest and not args.uses_manifest:
        parser.error(f"--manifest means nothing for `cnnctc {args.command}`; leave it out")
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ warnings drown the output otherwise
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="cnnctc: %(message)s",
                        stream=sys.stderr)
    from .._signals import terminate_as_interrupt
    from ..errors import OutputError
    try:
        if not stdout_open:
            raise OutputError("standard output is closed, so the results could not be written; redirect it to a "
                              "file (or to /dev/null to discard them)")
        # MindSpore turns Ctrl-C into SIGTERM once a graph has run
        with terminate_as_interrupt(on_repeat=_stop_now), _no_ir_dump_left():
            status = args.func(args)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise output_error(exc) from None
        return status
    except CnnctcError as exc:
        if not getattr(exc, "told", False):   # a line already written when it happened
            _tell(f"cnnctc: error: {_one_line(exc) or _empty_message(exc)}")
        if isinstance(exc, OutputError):
            silence_stdout()
        return 1
    except KeyboardInterrupt:
        _tell("cnnctc: interrupted")
        return 130
    except BrokenPipeError:  # e.g. `cnnctc predict ... | head`
        silence_stdout()
        return 1
    except MemoryError:
        hint = _MEMORY_HINTS.get(args.command)
        _tell(f"cnnctc: error: out of memory in `cnnctc {args.command}`; free memory (or raise the memory limit)"
              + (f", or ask for less at once ({hint})" if hint else ""))
        return 1
    except OSError as exc:
        from ..errors import os_error_line
        _tell(f"cnnctc: error: {os_error_line(exc)}")
        return 1
    except Exception as exc:  # a bug of ours: still one line, with the way to the details
        if os.environ.get("CNNCTC_DEBUG"):
            raise
        _tell(f"cnnctc: error: unexpected {type(exc).__name__}: {_one_line(exc) or '(no message)'} (a bug in cnnctc; "
              "run again with CNNCTC_DEBUG=1 for the traceback and report it)")
        return 1


def _tell(line):
    """One line on stderr. A stderr that cannot take it (closed, full) loses it; stdout never gets it
    (``print(file=None)`` would write it there, among the results)."""
    if sys.stderr is None:
        return
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def run_captured(argv):
    """Run ``cnnctc ARGV`` in this process as :func:`main` does, with what it writes captured: returns
    (exit status, stdout, stderr), log lines included, as a new process would have them. It skips the
    MindSpore import a new process pays; the root logger's handlers are set aside and restored."""
    import io
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()  # so that main's logging.basicConfig writes to this call's stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main([str(arg) for arg in argv])
            except SystemExit as exc:  # argparse's usage errors and --help
                status = exc.code
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = handlers, level
    return status, out.getvalue(), err.getvalue()


def _empty_message(exc):
    return (f"{type(exc).__name__} without a message (a bug in cnnctc; run again with CNNCTC_DEBUG=1 and report "
            "it)")


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text if len(text) <= 2000 else text[:2000] + " ..."


if __name__ == "__main__":
    sys.exit(main())
