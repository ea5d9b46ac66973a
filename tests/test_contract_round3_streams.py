"""The contract, round three: standard streams that are closed or full.

Real processes started by a real shell: ``2>&-`` and ``>&-`` close the descriptor (a subprocess
with DEVNULL would not), ``>/dev/full`` refuses every byte.
"""
import shlex
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

from conftest import subprocess_env

CNNCTC = f"{shlex.quote(sys.executable)} -m cnnctc"


def shell(command, timeout=300):
    """``bash -c COMMAND`` (CNNCTC stands for the command): its exit status, stdout and stderr."""
    return subprocess.run(["bash", "-c", command.replace("CNNCTC", CNNCTC)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    root = tmp_path_factory.mktemp("words")
    lines = []
    for i, word in enumerate(("cat", "road", "42", "lamp")):
        image = Image.new("RGB", (100, 32), "white")
        ImageDraw.Draw(image).text((8, 10), word, fill="black")
        image.save(root / f"{i}.png")
        lines.append(f"{i}.png\t{word}\n")
    (root / "labels.tsv").write_text("".join(lines))
    return root


def test_predict_with_stderr_closed_prints_its_results_and_nothing_else(words):
    run = shell(f"CNNCTC predict --model cnnctc/mini-synth --runtime mindspore {words} 2>&-")
    assert run.returncode == 0, run.stdout
    lines = run.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith(str(words)) for line in lines), run.stdout
    # An input it cannot read: exit 1, and its error line is not put among the results.
    run = shell(f"CNNCTC predict --model cnnctc/mini-synth --runtime mindspore {words} {words}/missing.png 2>&-")
    assert run.returncode == 1
    assert len(run.stdout.splitlines()) == 4 and "error" not in run.stdout and "Error" not in run.stdout


def test_make_lmdb_with_stderr_closed_writes_the_lmdb(words, tmp_path):
    out = tmp_path / "out.lmdb"
    run = shell(f"CNNCTC make-lmdb {words} {words}/labels.tsv {out} 2>&-")
    assert run.returncode == 0, run.stdout
    assert run.stdout.startswith(f"{out}: 4 samples written") and "error" not in run.stdout
    import lmdb
    with lmdb.open(str(out), readonly=True, lock=False) as env, env.begin() as txn:
        assert txn.get(b"num-samples") == b"4"


def test_a_command_with_stderr_closed_gives_no_file_descriptor_2(words, tmp_path):
    """Native libraries write to descriptor 2: it must not be the next file the command opens."""
    script = ("import os, sys; from cnnctc.cli import main; "
              f"status = main(['make-lmdb', {str(words)!r}, {str(words / 'labels.tsv')!r}, {str(tmp_path / 'o.lmdb')!r}]); "
              "print(status, os.readlink('/proc/self/fd/2'))")
    run = shell(f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} 2>&-")
    assert run.stdout.splitlines()[-1] == "0 /dev/null", run.stdout


def test_a_usage_error_with_stderr_closed_is_exit_2_with_nothing_on_stdout():
    run = shell("CNNCTC predict --no-such-option x.png 2>&-")
    assert (run.returncode, run.stdout) == (2, "")


def test_an_error_with_stderr_full_is_exit_1_without_a_traceback(tmp_path):
    run = shell(f"CNNCTC predict --model cnnctc/mini-synth {tmp_path}/missing.png 2>/dev/full; echo status $?")
    assert run.stdout == "status 1\n"


@pytest.mark.parametrize("args", ["--version", "--help", "predict --help", "make-lmdb --help"])
@pytest.mark.parametrize("stdout", [">&-", ">/dev/full", "| true"])
def test_help_and_version_exit_0_silently_whatever_stdout_is(args, stdout):
    run = shell(f"CNNCTC {args} {stdout}; exit ${{PIPESTATUS[0]}}", timeout=120)
    assert (run.returncode, run.stderr) == (0, "")
