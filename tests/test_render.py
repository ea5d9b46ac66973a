"""`cnnctc render` under races, kills, umasks and extremes; its fonts are a recorded input."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import PIL
import pytest

import cnnctc.render as render
from conftest import as_foreground_job, subprocess_env
from cnnctc.errors import CnnctcError
from cnnctc.render import FONT_CANDIDATES, MARKER, MAX_COUNT, find_fonts, write_word_images

QUICK = 60  # seconds: render loads no network
DRAWING = ("import sys\nfrom cnnctc.render import write_word_images\n"
           "write_word_images(sys.argv[1], 500000, alphabet='0123456789')\n")


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(**(env or {})),
                          capture_output=True, text=True, timeout=QUICK)


def one_error_line(run):
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnctc: error: ") and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def start_drawing(out):
    """A render of 500,000 images into ``out``, returned once it is drawing (its work folder fills)."""
    proc = subprocess.Popen([sys.executable, "-c", DRAWING, str(out)], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_foreground_job)
    deadline = time.monotonic() + QUICK
    while time.monotonic() < deadline:
        staging = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and p.is_dir()]
        if staging and len(os.listdir(staging[0])) > 20:
            return proc, staging[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the render never started drawing")


def stop(proc, sig):
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=QUICK)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_a_set_gets_the_modes_the_umask_gives(tmp_path, umask, folder_mode, file_mode):
    old = os.umask(umask)
    try:
        write_word_images(tmp_path / "set", 3)
        write_word_images(tmp_path / "deeper" / "set", 2)
    finally:
        os.umask(old)
    for folder in (tmp_path / "set", tmp_path / "deeper" / "set"):
        assert folder.stat().st_mode & 0o777 == folder_mode  # not mkdtemp's 0700
        assert {(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {file_mode}
    assert (tmp_path / "deeper").stat().st_mode & 0o777 == folder_mode


def test_a_second_render_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "set"
    proc, staging = start_drawing(out)
    try:
        second = cli("render", out, "--count", 3)
        assert second.returncode == 1
        assert "another `cnnctc render` is writing this set right now" in one_error_line(second)
        with pytest.raises(CnnctcError, match="another `cnnctc render` is writing"):
            write_word_images(out, 3, overwrite=True)
        assert staging.is_dir() and not os.path.lexists(out)  # the first one's work untouched
        elsewhere = cli("render", tmp_path / "other", "--count", 2)  # another OUT beside it is not blocked
        assert elsewhere.returncode == 0, elsewhere.stderr
    finally:
        _, err = stop(proc, signal.SIGINT)
    assert "KeyboardInterrupt" in err  # it was still drawing when stopped
    assert sorted(os.listdir(tmp_path)) == ["other"]  # its work folder and its lock are gone


def test_what_a_killed_render_left_is_removed_by_the_next_one(tmp_path):
    out = tmp_path / "set"
    proc, staging = start_drawing(out)
    stop(proc, signal.SIGKILL)
    assert staging.is_dir() and len(os.listdir(staging)) > 20  # kill -9 leaves its work folder
    mine = tmp_path / ".set.notmine1.tmp"  # a folder of the user's that only looks alike
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    run = cli("render", out, "--count", 3)
    assert run.returncode == 0, run.stderr  # the dead render's lock does not block it
    assert sorted(os.listdir(tmp_path)) == [".set.notmine1.tmp", "set"]
    assert (mine / "notes.txt").read_text() == "mine"


def test_out_is_checked_again_when_the_set_is_put_in_place(tmp_path, monkeypatch):
    out = tmp_path / "set"
    real = render.render_word
    calls = []

    def user_creates_out_meanwhile(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            out.mkdir()
            (out / "mine.txt").write_text("made while the render ran")
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "render_word", user_creates_out_meanwhile)
    with pytest.raises(CnnctcError, match="appeared while the images were drawn"):
        write_word_images(out, 5)
    assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "made while the render ran"
    assert os.listdir(tmp_path) == ["set"]

    write_word_images(tmp_path / "old", 2)  # --overwrite: the rendered set is replaced by something else
    calls.clear()
    target = tmp_path / "old"

    def user_replaces_the_set(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            (target / "mine.txt").write_text("added while the render ran")
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "render_word", user_replaces_the_set)
    with pytest.raises(CnnctcError, match="no longer a rendered set"):
        write_word_images(target, 4, overwrite=True)
    assert sorted(os.listdir(target)) == sorted([MARKER, "00000.png", "00001.png", "labels.tsv", "mine.txt"])
    assert sorted(os.listdir(tmp_path)) == ["old", "set"]


def test_count_is_bounded_and_says_the_bound(tmp_path):
    run = cli("render", tmp_path / "out", "--count", 100_000_000)
    assert run.returncode == 2 and f"must be at most {MAX_COUNT}" in run.stderr and "Traceback" not in run.stderr
    with pytest.raises(CnnctcError, match="at most 1,000,000"):
        write_word_images(tmp_path / "out", MAX_COUNT + 1)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("alphabet, why, api_why", [("aa", "repeats 'a'", "repeats 'a'"),
                                                    ("ab\tc", "control or line-break", "control or line-break"),
                                                    ("", "is empty", "has no symbols"),
                                                    (" ", "holds only white space", "has no symbols")])
def test_the_alphabet_passes_the_one_alphabet_check(tmp_path, alphabet, why, api_why):
    run = cli("render", tmp_path / "out", "--count", 3, "--alphabet", alphabet)
    assert run.returncode == 2 and "argument --alphabet: " in run.stderr, run.stderr
    assert why in run.stderr and "Traceback" not in run.stderr
    with pytest.raises(CnnctcError, match=api_why):
        write_word_images(tmp_path / "out", 3, alphabet=alphabet)
    assert os.listdir(tmp_path) == []


def test_symbols_the_fonts_cannot_draw_are_refused_before_anything_is_drawn(tmp_path):
    run = cli("render", tmp_path / "cjk", "--count", 3, "--alphabet", "ab婓孵")
    line = one_error_line(run)
    assert run.returncode == 1 and "has no glyph for 2 of the symbols (婓 孵)" in line and "--font" in line
    with pytest.raises(CnnctcError, match=r"has no glyph for 1 of the symbols \(👍\)"):
        write_word_images(tmp_path / "emoji", words=["ok", "👍x"])
    assert os.listdir(tmp_path) == []
    # What the fonts do have (accented Latin, a space inside a word) is drawn as asked.
    labels = write_word_images(tmp_path / "latin", words=["Straße", "naïve café"])
    assert labels.read_text().splitlines() == ["00000.png\tStraße", "00001.png\tnaïve café"]


@pytest.mark.parametrize("invisible", ["\u200b", "\u00ad", "\u202e"])
def test_invisible_format_characters_are_refused(tmp_path, invisible):
    with pytest.raises(CnnctcError, match=f"word 1 holds invisible format characters \\(U\\+{ord(invisible):04X}\\)"):
        write_word_images(tmp_path / "w", words=[f"a{invisible}b"])
    run = cli("render", tmp_path / "a", "--count", 2, "--alphabet", f"ab{invisible}")
    assert run.returncode == 2 and "argument --alphabet: holds invisible format characters" in run.stderr
    assert os.listdir(tmp_path) == []


def test_a_decomposed_accent_is_drawn_and_labelled_composed(tmp_path):
    labels = write_word_images(tmp_path / "w", words=["cafe\u0301"])   # e + combining acute, as some keyboards type it
    assert labels.read_text(encoding="utf-8") == "00000.png\tcaf\u00e9\n"


def test_random_words_never_start_or_end_with_a_space(tmp_path):
    labels = write_word_images(tmp_path / "spaced", 60, alphabet=" a")
    words = [line.split("\t")[1] for line in labels.read_text().splitlines()]
    assert len(words) == 60 and all(w == w.strip() and w for w in words) and any(" " in w for w in words)


def test_out_of_memory_is_one_line_that_says_so(tmp_path):
    # The address space capped just above what the process uses: a million words do not fit.
    code = ("import resource, sys\nfrom cnnctc.cli import main\nimport cnnctc.render\n"
            "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
            "resource.setrlimit(resource.RLIMIT_AS, (size + 40 * 2**20, resource.RLIM_INFINITY))\n"
            "sys.exit(main(sys.argv[1:]))\n")
    run = subprocess.run([sys.executable, "-c", code, "render", str(tmp_path / "out"), "--count", str(MAX_COUNT)],
                         env=subprocess_env(), capture_output=True, text=True, timeout=QUICK)
    assert run.returncode == 1
    assert one_error_line(run).startswith("cnnctc: error: out of memory in `cnnctc render`") and "--count" in one_error_line(run)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(len(find_fonts()) < 2, reason="needs two of the Debian fonts")
def test_fonts_are_an_input_recorded_with_their_hashes(tmp_path):
    first, second = find_fonts()[:2]
    run = cli("render", tmp_path / "one", "--count", 4, "--font", second, first)
    assert run.returncode == 0, run.stderr
    assert f"fonts: {os.path.basename(second)}, {os.path.basename(first)} (paths and SHA-256 in" in run.stdout
    marker = json.loads((tmp_path / "one" / MARKER).read_text())
    assert marker["fonts"] == [{"file": path, "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}
                               for path in (second, first)]
    assert (marker["pillow"], marker["seed"], marker["noise"]) == (PIL.__version__, 0, False)
    # The same inputs give the same pixels; other fonts give other ones.
    write_word_images(tmp_path / "again", 4, fonts=[second, first])
    write_word_images(tmp_path / "other", 4, fonts=[first, second])
    png = lambda folder: (tmp_path / folder / "00000.png").read_bytes()  # noqa: E731
    assert png("one") == png("again") != png("other")
    default = cli("render", tmp_path / "default", "--count", 1)
    installed = [os.path.basename(f) for f in FONT_CANDIDATES if os.path.isfile(f)]
    assert f"fonts: {', '.join(installed)} (" in default.stdout


@pytest.mark.parametrize("font, why", [("missing.ttf", "cannot read the font"), ("folder", "not a font file"),
                                        ("notes.txt", "not a usable font")])
def test_a_bad_font_is_one_line_and_writes_nothing(tmp_path, font, why):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a font")
    run = cli("render", tmp_path / "out", "--font", tmp_path / font)
    assert run.returncode == 1 and why in one_error_line(run)
    assert sorted(os.listdir(tmp_path)) == ["folder", "notes.txt"]
