"""`cnnctc render --style scene`: realistic word images, the same bytes whatever the workers, the
user's vocabulary, labels reduced to an alphabet, LMDB output, and its errors."""
import hashlib
import json
import os
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from PIL import Image

from conftest import subprocess_env
from cnnctc.render import MARKER
from cnnctc.synth import SceneConfig, TextSource, draw_scene, label_for, scene_fonts
from cnnctc.synth.writer import SceneRecipe, write_scene_images

QUICK = 120


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=QUICK)


def one_error_line(run):
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnctc: error: ") and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def records(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        found = dict(txn.cursor())
    env.close()
    return found


def folder_digest(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))
            if name != MARKER}


def test_the_same_seed_draws_the_same_bytes_whatever_the_workers(tmp_path):
    one = cli("render", tmp_path / "one.lmdb", "--style", "scene", "--count", 70, "--seed", 5)
    two = cli("render", tmp_path / "two.lmdb", "--style", "scene", "--count", 70, "--seed", 5, "--workers", 2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    first, second = records(tmp_path / "one.lmdb"), records(tmp_path / "two.lmdb")
    assert first[b"num-samples"] == b"70" and first == second
    recipe = json.loads(first[b"cnnctc-render"])  # what the set was drawn from, fonts with their SHA-256
    assert recipe["seed"] == 5 and recipe["style"] == "scene" and len(recipe["fonts"][0]["sha256"]) == 64
    other = cli("render", tmp_path / "other.lmdb", "--style", "scene", "--count", 70, "--seed", 6)
    assert records(tmp_path / "other.lmdb")[b"image-000000001"] != first[b"image-000000001"]
    # The folder form holds the same images as the LMDB, and records its inputs.
    folder = cli("render", tmp_path / "set", "--style", "scene", "--count", 70, "--seed", 5, "--workers", 2)
    assert folder.returncode == 0, folder.stderr
    assert (tmp_path / "set" / "00000.png").read_bytes() == first[b"image-000000001"]
    marker = json.loads((tmp_path / "set" / MARKER).read_text())
    assert marker["style"] == "scene" and marker["seed"] == 5 and marker["fonts"][0]["sha256"]


def test_images_are_32_high_in_colour_and_show_the_default_mix(tmp_path):
    recipe = SceneRecipe()
    kinds = {"digits": 0, "letters": 0}
    for index in range(60):
        png, label, text = recipe.draw(3, index)
        image = Image.open(__import__("io").BytesIO(png))
        assert image.mode == "RGB" and image.height == 32 and image.width >= 2
        assert label == text  # no alphabet: labels as drawn
        kinds["digits" if any(c.isdigit() for c in text) else "letters"] += 1
    assert kinds["digits"] > 0 and kinds["letters"] > 30


def test_a_vocabulary_is_drawn_as_written_each_once_or_count_at_random(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("Coca-Cola\nSTOP\n\n  Main St.  \n", encoding="utf-8")
    run = cli("render", tmp_path / "each", "--style", "scene", "--words-file", words)
    assert run.returncode == 0, run.stderr
    lines = (tmp_path / "each" / "labels.tsv").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[1] for line in lines] == ["Coca-Cola", "STOP", "Main St."]
    run = cli("render", tmp_path / "many.lmdb", "--style", "scene", "--words-file", words, "--count", 30,
              "--alphabet", "0123456789abcdefghijklmnopqrstuvwxyz")
    assert run.returncode == 0, run.stderr
    found = records(tmp_path / "many.lmdb")
    labels = {found[b"label-%09d" % i].decode() for i in range(1, 31)}
    assert labels == {"cocacola", "stop", "mainst"}


def test_label_reduction_follows_the_alphabet():
    assert label_for("Coca-Cola", "0123456789abcdefghijklmnopqrstuvwxyz") == "cocacola"
    assert label_for("03/09/2009", "0123456789abcdefghijklmnopqrstuvwxyz") == "03092009"
    assert label_for("Coca-Cola", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == "CocaCola"
    assert label_for("Coca-Cola") == "Coca-Cola"


def test_effects_zero_draws_flat_upright_words():
    font = scene_fonts()[0]
    flat = draw_scene("HOUSE", font, np.random.default_rng(1), config=SceneConfig(effects=0))
    pixels = np.asarray(flat, np.float32).reshape(-1, 3)
    # two colours (text and a flat background) and the anti-aliasing between them: no noise, no photo
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    ink = pixels[np.linalg.norm(pixels - background, axis=1).argmax()]
    direction = (ink - background) / np.linalg.norm(ink - background)
    offsets = pixels - background
    off_line = np.linalg.norm(offsets - np.outer(offsets @ direction, direction), axis=1)
    assert off_line.max() < 4 and counts.max() > 0.2 * len(pixels)
    busy = draw_scene("HOUSE", font, np.random.default_rng(1), config=SceneConfig())
    busy_pixels = np.asarray(busy, np.float32).reshape(-1, 3)
    assert len(np.unique(busy_pixels, axis=0)) > len(colours)


def test_trained_fonts_are_filtered_to_those_with_the_glyphs(tmp_path):
    fonts = scene_fonts()
    assert fonts and all(os.path.isfile(f) for f in fonts)
    assert not any("symbol" in os.path.basename(f).lower() or "d050000l" in f.lower() for f in fonts)
    not_font = tmp_path / "fake.ttf"
    not_font.write_bytes(b"not a font")
    run = cli("render", tmp_path / "out", "--style", "scene", "--font", not_font, "--count", 2)
    assert run.returncode == 1 and "draws all of the symbols" in one_error_line(run)
    assert not (tmp_path / "out").exists()


def test_text_source_defaults_to_a_dictionary_and_reads_a_vocabulary(tmp_path):
    source = TextSource()
    texts = [source.sample(np.random.default_rng([0, i])) for i in range(200)]
    assert len(set(texts)) > 150 and all(len(t) <= 13 for t in texts)
    assert TextSource(["A1"]).sample(np.random.default_rng(0)) == "A1"


def test_an_existing_output_is_kept_unless_overwrite_and_then_only_ours(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    run = cli("render", out, "--style", "scene", "--count", 3)
    assert run.returncode == 1 and "already holds other files" in one_error_line(run)
    run = cli("render", out, "--style", "scene", "--count", 3, "--overwrite")
    assert run.returncode == 1 and (out / "notes.txt").read_text() == "keep me"
    lmdb_out = tmp_path / "set.lmdb"
    assert cli("render", lmdb_out, "--style", "scene", "--count", 3).returncode == 0
    before = records(lmdb_out)
    again = cli("render", lmdb_out, "--style", "scene", "--count", 4, "--seed", 9)
    assert again.returncode == 1 and "--overwrite" in one_error_line(again)
    assert records(lmdb_out) == before
    assert cli("render", lmdb_out, "--style", "scene", "--count", 4, "--seed", 9, "--overwrite").returncode == 0
    assert records(lmdb_out)[b"num-samples"] == b"4"


@pytest.mark.parametrize("args, message", [
    (["--effects", "2"], "must be from 0"),
    (["--font-size", "40", "20"], "MIN is larger than MAX"),
    (["--workers", "0"], "--workers"),
    (["--count", "0"], "--count"),
])
def test_absurd_numbers_are_one_line(tmp_path, args, message):
    run = cli("render", tmp_path / "out", "--style", "scene", *args)
    assert run.returncode in (1, 2) and message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_scene_options_need_the_scene_style(tmp_path):
    run = cli("render", tmp_path / "out", "--effects", "0.5")
    assert run.returncode == 2 and "--effects is a scene-style option; add --style scene" in run.stderr
    run = cli("render", tmp_path / "out", "--style", "scene", "--noise")
    assert run.returncode == 2 and "--noise is a plain-style option" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_words_file_that_is_not_text_names_the_line(tmp_path):
    words = tmp_path / "words.txt"
    words.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    run = cli("render", tmp_path / "out", "--style", "scene", "--words-file", words)
    assert run.returncode == 1 and "line 3 is not UTF-8" in one_error_line(run)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    run = cli("render", tmp_path / "out", "--style", "scene", "--words-file", empty)
    assert run.returncode == 1 and "holds no words" in one_error_line(run)


def test_the_plain_style_writes_an_lmdb_too(tmp_path):
    run = cli("render", tmp_path / "plain.lmdb", "--count", 5, "--seed", 2)
    assert run.returncode == 0 and "plain.lmdb: 5 images, an LMDB" in run.stdout, run.stderr
    assert cli("render", tmp_path / "plain", "--count", 5, "--seed", 2).returncode == 0
    found = records(tmp_path / "plain.lmdb")
    lines = (tmp_path / "plain" / "labels.tsv").read_text().splitlines()
    assert [found[b"label-%09d" % i].decode() for i in range(1, 6)] == [line.split("\t")[1] for line in lines]
    assert Image.open(__import__("io").BytesIO(found[b"image-000000001"])).tobytes() == \
        Image.open(tmp_path / "plain" / "00000.png").tobytes()


def test_a_fifo_as_font_or_words_file_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "fifo.ttf"
    os.mkfifo(fifo)
    run = cli("render", tmp_path / "out", "--style", "scene", "--count", 2, "--font", fifo)
    assert run.returncode == 1 and "not a regular file" in one_error_line(run)
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    os.symlink(scene_fonts()[0], fonts / "real.ttf")
    os.mkfifo(fonts / "zz.ttf")   # inside a folder: skipped
    run = cli("render", tmp_path / "from-folder", "--style", "scene", "--count", 2, "--font", fonts)
    assert run.returncode == 0, run.stderr
    words = tmp_path / "words.txt"
    os.mkfifo(words)
    for style in ("scene", "plain"):
        run = cli("render", tmp_path / f"w-{style}", "--style", style, "--words-file", words)
        assert run.returncode == 1 and "FIFO" in one_error_line(run)


@pytest.mark.parametrize("content, message", [
    ("he\x1b[31mllo\n", "control or line-break character (U+001B)"),
    ("one\x85two\n", "control or line-break character (U+0085)"),
    ("\u2800\n", "draws nothing"),
    ("a" * 300 + "\n", "300 symbols long"),
])
def test_words_a_label_cannot_hold_or_an_image_cannot_show_are_refused_naming_the_line(tmp_path, content, message):
    words = tmp_path / "words.txt"
    words.write_text("fine\n" + content, encoding="utf-8")
    run = cli("render", tmp_path / "out", "--style", "scene", "--words-file", words)
    line = one_error_line(run)
    assert run.returncode == 1 and "line 2" in line and message in line and len(line) < 400


def test_a_byte_order_mark_is_not_part_of_the_first_word(tmp_path):
    words = tmp_path / "words.txt"
    words.write_bytes("\ufeffSTOP\nGO\n".encode("utf-8"))
    run = cli("render", tmp_path / "out", "--style", "scene", "--words-file", words)
    assert run.returncode == 0, run.stderr
    assert [l.split("\t")[1] for l in (tmp_path / "out" / "labels.tsv").read_text().splitlines()] == ["STOP", "GO"]


def test_a_word_whose_label_would_be_empty_is_refused(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("---\nabc\n")
    run = cli("render", tmp_path / "out.lmdb", "--style", "scene", "--words-file", words,
              "--alphabet", "0123456789abcdefghijklmnopqrstuvwxyz")
    assert run.returncode == 1 and "'---' has no symbol of the alphabet" in one_error_line(run)
    assert not (tmp_path / "out.lmdb").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"font_size": (0, 0)}, "font size must be a whole number from 6"),
    ({"font_size": (60, 10)}, "largest font size must be a whole number from 60"),
    ({"seed": -1}, "seed must be"),
    ({"workers": "2"}, "workers must be"),
    ({"workers": 0}, "workers must be"),
    ({"workers": 10**9}, "workers must be a whole number from 1 to 64"),
    ({"effects": float("nan")}, "effects must be"),
])
def test_the_api_refuses_absurd_settings_before_drawing(tmp_path, kwargs, message):
    from cnnctc.errors import CnnctcError
    with pytest.raises(CnnctcError, match=message):
        write_scene_images(tmp_path / "out", 2, **kwargs)
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_only_an_lmdb_render_drew(tmp_path):
    from cnnctc.data import write_lmdb
    mine = tmp_path / "mine.lmdb"
    write_lmdb(mine, [(b"\x89PNG", "hand"), (b"\x89PNG", "labelled")])
    before = records(mine)
    run = cli("render", mine, "--style", "scene", "--count", 3, "--overwrite")
    assert run.returncode == 1 and "did not draw" in one_error_line(run)
    assert records(mine) == before


def test_backgrounds_are_read_lazily_and_junk_is_skipped_quietly(tmp_path):
    folder = tmp_path / "bg"
    folder.mkdir()
    for i in range(40):
        Image.new("RGB", (300, 200), (i * 6, 100, 200 - i * 4)).save(folder / f"{i:02d}.png")
    (folder / "junk.png").write_bytes(b"not an image")
    os.mkfifo(folder / "pipe.png")
    run = cli("render", tmp_path / "out", "--style", "scene", "--count", 30, "--backgrounds", folder, "--workers", 2)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    from cnnctc.synth import Backgrounds
    backgrounds = Backgrounds(folder)
    assert len(backgrounds.paths) == 40 and len(backgrounds._cache) == 0   # nothing decoded until drawn from
    for i in range(50):
        backgrounds.crop(np.random.default_rng(i), 40, 20)
    assert len(backgrounds._cache) <= 32


def test_killing_a_render_with_workers_leaves_no_tracebacks_and_no_workers(tmp_path):
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-m", "cnnctc", "render", str(tmp_path / "k.lmdb"), "--style", "scene",
                             "--count", "3000", "--workers", "2"], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.name.startswith(".k.lmdb.") for p in tmp_path.iterdir()):
        time.sleep(0.1)
    time.sleep(2)
    proc.kill()
    _, stderr = proc.communicate(timeout=60)   # the workers hold stderr until they are gone
    assert "Traceback" not in stderr and "leaked" not in stderr, stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:   # the workers see the parent's end of their pipes close, and go
        left = subprocess.run(["ps", "-o", "pid=", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.2)
    assert left == []   # no worker outlived its parent for long
    assert not (tmp_path / "k.lmdb").exists()


def test_a_huge_backgrounds_tree_is_refused_soon_not_walked_whole(tmp_path, monkeypatch):
    import cnnctc.synth.sources as sources
    from cnnctc.errors import CnnctcError
    for i in range(30):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "notes.txt").write_text("x")
    monkeypatch.setattr(sources, "_MAX_VISITED", 20)
    with pytest.raises(CnnctcError, match="more than 20 files and folders to look through"):
        sources.Backgrounds(tmp_path)
