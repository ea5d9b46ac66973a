"""Bad input never costs data, a traceback, a crash or a hang: images, LMDBs, make-lmdb, render.

Real files, real LMDBs, real FIFOs and real subprocesses of the CLI. Every CLI case checks the
exit status, that no traceback reaches the user, that it ends within a bound (``timeout``) and
that the user's files hash the same before and after.
"""
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import as_foreground_job, isolate, subprocess_env
from cnnctc.data import LabelFilter, LmdbDataset, make_lmdb, write_lmdb
from cnnctc.errors import CnnctcError
from cnnctc.render import MARKER, render_word, write_word_images
from cnnctc.transforms import ImageError, load_image, preprocess

DIGITS = "0123456789"
QUICK = 60      # seconds: commands that do not load a network
NETWORK = 240   # seconds: commands that import MindSpore and run a network


# Helpers ---------------------------------------------------------------------------------------

def hash_tree(root):
    """{relative path: sha256 (files) or kind (others)} for everything under ``root``; never opens
    anything but regular files, so FIFOs in the tree are safe. The test's cache (conftest puts it
    under tmp_path) is not the user's files: predict keeps its ONNX export there."""
    root = Path(root)
    cache = os.path.abspath(os.environ.get("CNNCTC_CACHE_DIR", os.devnull))
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.abspath(os.path.join(folder, d)) != cache]
        for name in dirs + files:
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            key = str(path.relative_to(root))
            if stat.S_ISLNK(mode):
                found[key] = "link:" + os.readlink(path)
            elif stat.S_ISREG(mode):
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[key] = "dir" if stat.S_ISDIR(mode) else "special"
    return found


def cli(*args, timeout=QUICK, cwd=None):
    """Run ``cnnctc`` as a user would; no traceback, no death by signal, within ``timeout``."""
    run = subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(), cwd=cwd,
                         capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert run.returncode >= 0, f"killed by signal {-run.returncode}: {run.stderr[-2000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    return run


def python(code, *args, timeout=QUICK):
    """Run a Python snippet in a child process (for cases that would hang or kill the caller)."""
    run = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=subprocess_env(), capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return run


def error_line(run):
    """The single ``cnnctc: error:`` line of a failed command."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("cnnctc: error:")]
    assert len(lines) == 1, run.stderr
    return lines[0]


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_bomb_png(path, side=20000):
    """A valid 1-bit PNG of side x side pixels (400 M pixels for 20000), about 90 KB on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                           + chunk(b"IEND", b""))
    return Path(path)


def dataset_folder(root, words=("123", "4567", "89")):
    """A user's dataset made by hand (not by render): images, labels.tsv and a note."""
    root = Path(root)
    root.mkdir(parents=True)
    lines = []
    for number, word in enumerate(words):
        render_word(word).save(root / f"w{number}.png")
        lines.append(f"w{number}.png\t{word}\n")
    (root / "labels.tsv").write_text("".join(lines), encoding="utf-8")
    (root / "notes.txt").write_text("where these came from\n", encoding="utf-8")
    return root


def small_lmdb(path, count=40):
    words = [str(1000 + 37 * n) for n in range(count)]
    write_lmdb(path, [(png_bytes(render_word(w)), w) for w in words])
    return Path(path)


@pytest.fixture(scope="module")
def narrow_ckpt(tmp_path_factory):
    """A narrow random network saved as a checkpoint (nothing trained)."""
    from cnnctc.checkpoint import save_checkpoint
    from cnnctc.network import CNNCTC
    return save_checkpoint(CNNCTC(output_channel=32), tmp_path_factory.mktemp("ckpt") / "narrow.ckpt")


@pytest.fixture(scope="module")
def exported_cache(tmp_path_factory, narrow_ckpt):
    """A cache holding narrow_ckpt's ONNX export, as predict and eval leave it after their first run."""
    from cnnctc.runtime import cached_onnx
    cache = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as patch:  # the settings conftest's _isolated_env gives each test
        isolate(patch, cache)
        cached_onnx(narrow_ckpt)
    return cache


@pytest.fixture
def exported(monkeypatch, exported_cache, narrow_ckpt):
    """narrow_ckpt, with its ONNX export in the cache: a predict or eval child reads it without the
    MindSpore import and export of a first run (input handling is the point, not the export)."""
    monkeypatch.setenv("CNNCTC_CACHE_DIR", str(exported_cache))
    return narrow_ckpt


def unwritable_folder(tmp_path):
    """A folder nobody here may create entries in (read-only for a normal user; /sys for root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        shutil.rmtree(tempfile.mkdtemp(dir="/sys"))
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only folder available to root here")


# Images ----------------------------------------------------------------------------------------

def test_a_decompression_bomb_is_an_unreadable_image_that_says_why(tmp_path):
    bomb = write_bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    for source in (bomb, bomb.read_bytes()):
        with pytest.raises(ImageError, match=r"400,000,000 pixels, more than the 89,478,485 Pillow allows "
                                             r"for decompression-bomb safety"):
            load_image(source)
    # Between Pillow's limit and twice it Pillow only warns: refused too, and nothing is printed.
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="decompression-bomb"):
            load_image(write_bomb_png(tmp_path / "half.png", side=10000))
    assert not seen


def test_exif_orientation_is_applied(tmp_path):
    upright = render_word("hello", size=32)
    stored = upright.rotate(90, expand=True)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    upright.save(tmp_path / "upright.jpg", quality=95)
    rotated, straight = preprocess([tmp_path / "rotated.jpg", tmp_path / "upright.jpg"])
    assert np.abs(rotated - straight).mean() < 0.05  # the same picture, up to JPEG noise
    sideways = preprocess(np.asarray(Image.open(tmp_path / "rotated.jpg").convert("RGB")))[0]
    assert np.abs(sideways - straight).mean() > 0.2  # what ignoring the tag gives
    assert load_image(tmp_path / "rotated.jpg").size == upright.size
    # Lossless formats carry EXIF too, and there the result is exact.
    stored.save(tmp_path / "rotated.png", exif=exif.tobytes())
    np.testing.assert_array_equal(preprocess(tmp_path / "rotated.png"), preprocess(upright))


def test_transparency_is_composited_onto_white():
    on_white = Image.new("RGB", (90, 32), "white")
    ImageDraw.Draw(on_white).text((4, 8), "abc 123", fill="black")
    transparent = Image.new("RGBA", on_white.size, (0, 0, 0, 0))  # black, fully transparent
    ImageDraw.Draw(transparent).text((4, 8), "abc 123", fill=(0, 0, 0, 255))
    expected = preprocess(on_white)
    np.testing.assert_array_equal(preprocess(transparent), expected)
    np.testing.assert_array_equal(preprocess(png_bytes(transparent)), expected)
    np.testing.assert_array_equal(preprocess(np.asarray(transparent)), expected)
    np.testing.assert_array_equal(preprocess(transparent.convert("LA")), expected)
    # A palette image whose red background entry is transparent reads as its text on white.
    palette = Image.new("P", on_white.size, 0)
    palette.putpalette([255, 0, 0, 0, 0, 0, 40, 90, 200])
    ImageDraw.Draw(palette).text((4, 8), "abc 123", fill=1)
    ImageDraw.Draw(palette).line((0, 30, 89, 30), fill=2)
    indices = np.asarray(palette)
    assert set(np.unique(indices)) == {0, 1, 2}
    colours = np.array([[255, 255, 255], [0, 0, 0], [40, 90, 200]], np.uint8)  # entry 0 on white
    np.testing.assert_array_equal(preprocess(_with_transparency(palette, 0)),
                                  preprocess(colours[indices]))
    # Opaque pixels are untouched: an opaque RGBA image reads exactly as its RGB.
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    opaque = rgb.convert("RGBA")
    np.testing.assert_array_equal(preprocess(opaque), preprocess(rgb))


def _with_transparency(image, index):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=index)
    return buffer.getvalue()


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    run = python("import sys\nfrom cnnctc.transforms import load_image, ImageError\n"
                 "try:\n    load_image(sys.argv[1])\nexcept ImageError as exc:\n    print(exc)\n", fifo, timeout=30)
    assert run.returncode == 0 and run.stdout.strip() == f"{fifo}: not a regular file (a FIFO); only regular " \
                                                         "files are read"
    with pytest.raises(ImageError, match=r"a folder, not an image file"):
        load_image(tmp_path)
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "sock.png"))
        with pytest.raises(ImageError, match=r"not a regular file \(a socket\)"):
            load_image(tmp_path / "sock.png")
    finally:
        server.close()
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ImageError, match=r"cannot read it \(Not a directory\)"):
        load_image(tmp_path / "file" / "below.png")
    with pytest.raises(ImageError, match=r"^'?a\\nb.png: no such file"):
        load_image("a\nb.png")  # one line even for a name with a newline


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_names_the_file(tmp_path):
    secret = tmp_path / "secret.png"
    render_word("42").save(secret)
    secret.chmod(0)
    with pytest.raises(ImageError, match=r"secret.png: permission denied"):
        load_image(secret)


def test_find_images_skips_special_files_and_ends_on_link_loops(tmp_path):
    root = tmp_path / "in"
    (root / "sub" / "deep").mkdir(parents=True)
    for name in ("a.png", "sub/b.png", "sub/deep/c.png"):
        render_word("7").save(root / name)
    os.mkfifo(root / "pipe.png")
    os.mkfifo(root / "sub" / "pipe.png")
    os.symlink("..", root / "sub" / "up")      # loops back to root
    os.symlink(".", root / "sub" / "self")
    os.symlink("..", root / "sub" / "deep" / "up")
    code = ("import json, sys\nfrom cnnctc.transforms import find_images\n"
            "print(json.dumps([find_images([sys.argv[1]], recursive=True),"
            " find_images([sys.argv[1] + '/**/*.png'], recursive=True), find_images([sys.argv[1]]),"
            " find_images([sys.argv[1] + '/pipe.png'])]))")
    run = python(code, root, timeout=30)
    assert run.returncode == 0, run.stderr
    walked, globbed, flat, direct = json.loads(run.stdout)
    expected = [str(root / "a.png"), str(root / "sub" / "b.png"), str(root / "sub" / "deep" / "c.png")]
    assert walked == expected
    assert sorted(globbed) == expected
    assert flat == [str(root / "a.png")]
    assert direct == [str(root / "pipe.png")]  # named directly: kept, so reading it reports the error


def test_a_fifo_in_predict_never_hangs(tmp_path, exported):
    good = tmp_path / "top.png"
    render_word("12").save(good)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    render_word("345").save(folder / "one.png")
    render_word("678").save(folder / "sub" / "two.png")
    os.mkfifo(folder / "sub" / "met.png")           # met under --recursive: skipped, never opened
    os.symlink("..", folder / "sub" / "loop")        # and a link loop: the walk ends
    named = tmp_path / "named.png"
    os.mkfifo(named)                                 # named directly: one error line
    before = hash_tree(tmp_path)
    run = cli("predict", good, named, folder, "--recursive", "--checkpoint", exported, timeout=NETWORK)
    assert run.returncode == 1
    printed = [line.split(": ")[0] for line in run.stdout.splitlines()]
    assert printed == [str(good), str(folder / "one.png"), str(folder / "sub" / "two.png")]
    assert error_line_for(run, named).endswith("not a regular file (a FIFO); only regular files are read")
    assert "met.png" not in run.stderr
    assert hash_tree(tmp_path) == before


def error_line_for(run, path):
    lines = [line for line in run.stderr.splitlines() if line.startswith(f"cnnctc: error: {path}:")]
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_a_bomb_among_good_images_in_predict(tmp_path, exported):
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    render_word("2024").save(first)
    render_word("77").save(last)
    bomb = write_bomb_png(tmp_path / "bomb.png")
    before = hash_tree(tmp_path)
    started = time.monotonic()
    run = cli("predict", first, bomb, last, "--checkpoint", exported, timeout=NETWORK)
    assert run.returncode == 1
    assert [line.split(": ")[0] for line in run.stdout.splitlines()] == [str(first), str(last)]
    assert "decompression-bomb safety" in error_line_for(run, bomb)
    assert "1 of 3 inputs could not be read" in run.stderr
    assert time.monotonic() - started < NETWORK / 2
    assert hash_tree(tmp_path) == before


# LMDB datasets ---------------------------------------------------------------------------------

def truncate(lmdb_dir, size):
    with open(Path(lmdb_dir) / "data.mdb", "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_a_truncated_lmdb_is_refused_not_a_bus_error(tmp_path, exported, command):
    data = small_lmdb(tmp_path / "data.lmdb")
    full = (data / "data.mdb").stat().st_size
    assert full > 40_000
    truncate(data, 20_480)
    before = hash_tree(tmp_path)
    if command == "eval":
        run = cli("eval", "--checkpoint", exported, "--data", data, timeout=NETWORK)
    else:
        run = cli("finetune", "--train", data, "--out", tmp_path / "run", "--pretrained", "none", "--alphabet",
                  DIGITS, "--output-channel", 32, "--steps", 2, "--batch-size", 4, timeout=NETWORK)
    assert run.returncode == 1  # not -7 (SIGBUS) or 135
    line = error_line(run)
    assert f"{data}: the LMDB is damaged (data.mdb is 20,480 bytes, needs " in line and line.endswith("rebuild it")
    assert hash_tree(tmp_path) == before


def test_an_implausible_sample_count_is_refused_at_once(tmp_path, exported):
    data = small_lmdb(tmp_path / "data.lmdb")
    env = lmdb.open(str(data), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", b"1000000000000")
    env.close()
    before = hash_tree(tmp_path)
    started = time.monotonic()
    run = cli("eval", "--checkpoint", exported, "--data", data, timeout=NETWORK)
    assert run.returncode == 1
    assert "num-samples says 1,000,000,000,000 samples but the LMDB holds only 81 records" in error_line(run)
    assert time.monotonic() - started < NETWORK / 2
    assert hash_tree(tmp_path) == before


@pytest.mark.parametrize("value", [b"-5", b"12abc", b"1e3", b"", b"\xff"])
def test_a_malformed_sample_count_is_refused(tmp_path, value):
    data = small_lmdb(tmp_path / "data.lmdb", count=3)
    env = lmdb.open(str(data), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", value)
    env.close()
    with pytest.raises(CnnctcError, match="no valid 'num-samples' key"):
        LmdbDataset(data, LabelFilter(DIGITS))


def test_a_damaged_page_pointer_is_refused_not_a_bus_error(tmp_path):
    """A full-size file whose record runs past its end: a raw LMDB read dies, ours reports it."""
    data = tmp_path / "data.lmdb"
    write_lmdb(data, [(os.urandom(6000), "123"), (os.urandom(6000), "456")])
    raw = bytearray((data / "data.mdb").read_bytes())
    key = b"image-000000002"
    at = raw.index(key)
    assert struct.unpack_from("<HH", raw, at - 4) == (1, len(key))  # a leaf node holding a big value
    struct.pack_into("<HH", raw, at - 8, 0, 16)  # its size: 1 MiB, far past the end of the file
    (data / "data.mdb").write_bytes(bytes(raw))
    before = hash_tree(tmp_path)
    crash = python("import lmdb, sys\nenv = lmdb.open(sys.argv[1], readonly=True, lock=False)\n"
                   "with env.begin() as txn:\n    txn.get(b'image-000000002')\n", data, timeout=30)
    assert crash.returncode == -signal.SIGBUS  # what reading it unguarded does
    # Opening reads the labels only; the damaged image is reported when it is read, and the
    # process reading the dataset lives on.
    run = python("import sys\nfrom cnnctc.data import LmdbDataset, LabelFilter\nfrom cnnctc.errors import "
                 "CnnctcError\ndataset = LmdbDataset(sys.argv[1], LabelFilter('0123456789'))\n"
                 "print(len(dataset), len(dataset.record(0)[0]))\ntry:\n    dataset.record(1)\n"
                 "except CnnctcError as exc:\n    print(exc)\n", data, timeout=30)
    assert run.returncode == 0, run.stderr
    first, line = run.stdout.splitlines()
    assert first == "2 6000"
    assert line == f"{data}: the LMDB is damaged (reading image-000000002 crashes a reader with SIGBUS); rebuild it"
    assert hash_tree(tmp_path) == before


def test_special_and_empty_files_are_not_lmdbs(tmp_path):
    folder = tmp_path / "fifo.lmdb"
    folder.mkdir()
    os.mkfifo(folder / "data.mdb")
    run = python("import sys\nfrom cnnctc.data import LmdbDataset, LabelFilter\nfrom cnnctc.errors import "
                 "CnnctcError\ntry:\n    LmdbDataset(sys.argv[1], LabelFilter('0123456789'))\n"
                 "except CnnctcError as exc:\n    print(exc)\n", folder, timeout=30)
    assert run.returncode == 0 and "is not a regular file" in run.stdout
    empty = tmp_path / "empty.lmdb"
    empty.mkdir()
    (empty / "data.mdb").write_bytes(b"")
    with pytest.raises(CnnctcError, match="data.mdb is empty"):
        LmdbDataset(empty, LabelFilter(DIGITS))
    with pytest.raises(CnnctcError, match=r"no data.mdb in it"):
        LmdbDataset(dataset_folder(tmp_path / "images"), LabelFilter(DIGITS))


# make-lmdb -------------------------------------------------------------------------------------

@pytest.fixture
def user_data(tmp_path):
    """tmp/images (a dataset with notes), tmp/meta/labels.tsv, tmp/other/ (unrelated files)."""
    images = dataset_folder(tmp_path / "images")
    (tmp_path / "meta").mkdir()
    labels = tmp_path / "meta" / "labels.tsv"
    shutil.copy(images / "labels.tsv", labels)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine\n")
    (tmp_path / "plain.txt").write_text("not an lmdb\n")
    return images, labels


@pytest.mark.parametrize("out, why", [
    ("images", "is the input"),                   # make-lmdb IMAGES LABELS IMAGES --overwrite
    ("meta", "holds the input"),                  # the folder holding the labels file
    (".", "holds the input"),                     # a parent of both inputs
    ("meta/labels.tsv", "is the input"),          # the labels file itself
    ("plain.txt", "exists and is not an LMDB"),   # a file that is not an LMDB
    ("other", "is a folder holding other files, not an LMDB"),
])
def test_overwrite_never_replaces_what_make_lmdb_did_not_make(tmp_path, user_data, out, why):
    images, labels = user_data
    before = hash_tree(tmp_path)
    run = cli("make-lmdb", images, labels, tmp_path / out, "--overwrite")
    assert run.returncode == 1
    assert why in error_line(run)
    assert hash_tree(tmp_path) == before  # byte for byte, and no temporary left behind


def test_overwrite_replaces_an_lmdb_it_made(tmp_path, user_data):
    images, labels = user_data
    out = tmp_path / "data.lmdb"
    small_lmdb(out, count=5)
    run = cli("make-lmdb", images, labels, out)
    assert run.returncode == 1 and "already exists" in error_line(run)
    run = cli("make-lmdb", images, labels, out, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert "3 samples written" in run.stdout
    assert sorted(os.listdir(out)) == ["data.mdb", "lock.mdb"]
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []
    with LmdbDataset(out, LabelFilter(DIGITS)) as dataset:
        assert [label for _, _, label in dataset.samples] == ["123", "4567", "89"]


def test_bad_labels_files_and_outputs_are_one_line(tmp_path, user_data):
    images, labels = user_data
    os.mkfifo(tmp_path / "labels.fifo")
    (tmp_path / "latin1.tsv").write_bytes("w0.png\t12\nw1.png\t34\nw0.png\tcaf\xe9\n".encode("latin-1"))
    cases = [
        (images, tmp_path / "meta", "the labels file is a folder"),
        (images, tmp_path / "labels.fifo", "the labels file is not a regular file"),
        (images, tmp_path / "latin1.tsv", "not UTF-8 text (line 3:"),   # the line itself, not the first
        (images, tmp_path / "missing.tsv", "no such labels file"),
        (tmp_path / "plain.txt", labels, "not a folder"),
    ]
    before = hash_tree(tmp_path)
    for images_dir, labels_file, why in cases:
        run = cli("make-lmdb", images_dir, labels_file, tmp_path / "new.lmdb")
        assert run.returncode == 1 and why in error_line(run), (labels_file, run.stderr)
    run = cli("make-lmdb", images, labels, tmp_path / "no" / "such" / "new.lmdb")
    assert run.returncode == 1 and "does not exist; create it first" in error_line(run)
    run = cli("make-lmdb", images, labels, tmp_path / "plain.txt" / "new.lmdb")
    assert run.returncode == 1 and "plain.txt is not a folder" in error_line(run)
    run = cli("make-lmdb", images, labels, unwritable_folder(tmp_path) / "new.lmdb")
    assert run.returncode == 1 and "cannot write in" in error_line(run)
    assert hash_tree(tmp_path) == before


def test_bad_images_are_skipped_and_counted_never_fatal(tmp_path, user_data):
    images, labels = user_data
    write_bomb_png(images / "bomb.png")
    os.mkfifo(images / "pipe.png")
    (images / "folder.png").mkdir()
    with open(labels, "a", encoding="utf-8") as f:
        f.write("bomb.png\t1\npipe.png\t2\nfolder.png\t3\nnotes.txt\t4\n")
    before = hash_tree(tmp_path)
    started = time.monotonic()
    run = cli("make-lmdb", images, labels, tmp_path / "data.lmdb")
    assert run.returncode == 0, run.stderr
    assert "3 samples written; skipped 4 unreadable images" in run.stdout
    assert "decompression-bomb safety" in run.stderr and "not a regular file (a FIFO)" in run.stderr
    assert time.monotonic() - started < QUICK / 2
    assert {k: v for k, v in hash_tree(tmp_path).items() if not k.startswith("data.lmdb")} == before


def test_write_lmdb_takes_only_text_labels(tmp_path):
    for sample, why in [((b"png", b"bytes"), "label must be text"), ((b"png", 7), "label must be text"),
                        (("not bytes", "x"), "image must be encoded bytes"), ((b"png",), "pair")]:
        with pytest.raises(CnnctcError, match=why):
            write_lmdb(tmp_path / "out.lmdb", [(b"ok", "fine"), sample])
        assert os.listdir(tmp_path) == []  # the temporary LMDB is gone


def test_an_interrupted_make_lmdb_leaves_the_old_lmdb_and_no_temporary(tmp_path, user_data):
    images, labels = user_data
    out = small_lmdb(tmp_path / "data.lmdb", count=5)
    before = hash_tree(tmp_path)
    seen = []

    def progress(n):
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_lmdb(images, labels, out, overwrite=True, progress=progress)
    assert hash_tree(tmp_path) == before


# render ----------------------------------------------------------------------------------------

def test_render_into_an_existing_dataset_refuses_and_leaves_it(tmp_path):
    folder = dataset_folder(tmp_path / "dataset")
    before = hash_tree(tmp_path)
    run = cli("render", folder, "--count", 3)
    assert run.returncode == 1 and "already holds other files" in error_line(run)
    with pytest.raises(CnnctcError, match="already holds other files"):
        write_word_images(folder, 3, overwrite=True)
    assert hash_tree(tmp_path) == before


def test_render_replaces_only_a_set_it_made(tmp_path):
    out = tmp_path / "set"
    write_word_images(out, 4, alphabet=DIGITS, seed=1)
    assert (out / MARKER).is_file()
    first = hash_tree(tmp_path)
    run = cli("render", out, "--count", 2)
    assert run.returncode == 1 and "already holds a rendered set" in error_line(run)
    assert hash_tree(tmp_path) == first
    write_word_images(out, 2, alphabet=DIGITS, seed=2, overwrite=True)
    assert sorted(os.listdir(out)) == sorted([MARKER, "00000.png", "00001.png", "labels.tsv"])
    assert os.listdir(tmp_path) == ["set"]  # no staging folder left behind
    (out / "mine.txt").write_text("added by hand\n")
    second = hash_tree(tmp_path)
    with pytest.raises(CnnctcError, match="already holds other files"):
        write_word_images(out, 2, overwrite=True)
    assert hash_tree(tmp_path) == second
    empty = tmp_path / "empty"
    empty.mkdir()
    write_word_images(empty, 2)  # an empty folder is fine
    assert (empty / "labels.tsv").is_file()


def test_an_interrupted_render_leaves_the_old_set(tmp_path):
    out = tmp_path / "set"
    write_word_images(out, 3, alphabet=DIGITS)
    before = hash_tree(tmp_path)
    code = ("import sys\nfrom cnnctc.render import write_word_images\n"
            "try:\n    write_word_images(sys.argv[1], 100000, overwrite=True)\n"
            "except KeyboardInterrupt:\n    print('interrupted')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_foreground_job)
    try:
        deadline = time.monotonic() + QUICK
        staging = []
        while time.monotonic() < deadline and not staging:  # wait until it is drawing
            staging = [p for p in tmp_path.iterdir() if p.name.startswith(".set.") and len(os.listdir(p)) > 20]
            time.sleep(0.05)
        assert staging, "the render never started"
        proc.send_signal(signal.SIGINT)
        out_text, err_text = proc.communicate(timeout=QUICK)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out_text.strip()) == (0, "interrupted"), err_text  # Ctrl-C reached the render
    assert hash_tree(tmp_path) == before  # the old set intact, the staging folder gone


@pytest.mark.parametrize("args, why", [
    (["--words", "ab\ncd"], "contains a newline"),
    (["--words", "ab\tcd"], "contains a tab"),
    (["--words", "ok", ""], "word 2 is empty"),
])
def test_render_rejects_bad_words_in_one_line(tmp_path, args, why):
    run = cli("render", tmp_path / "out", *args)
    assert run.returncode == 1 and why in error_line(run)
    assert os.listdir(tmp_path) == []


def test_render_into_an_unwritable_place_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    before = hash_tree(tmp_path)
    for out, why in [(tmp_path / "file", "exists and is not a folder"),
                     (tmp_path / "file" / "below", "is not a folder"),
                     (unwritable_folder(tmp_path) / "out", "cannot write there")]:
        run = cli("render", out, "--count", 2)
        assert run.returncode == 1 and why in error_line(run), run.stderr
    with pytest.raises(CnnctcError, match="count must be a whole number"):
        write_word_images(tmp_path / "x", 0)
    assert hash_tree(tmp_path) == before
