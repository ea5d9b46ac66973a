"""LMDB datasets in the field's format: make-lmdb, the reader and its filtering."""
import io
import subprocess
import sys

import lmdb
import numpy as np
import pytest

from conftest import subprocess_env
from cnnctc.data import LabelFilter, LmdbDataset, write_lmdb
from cnnctc.errors import CnnctcError
from cnnctc.render import render_word
from cnnctc.transforms import ImageError, preprocess
from cnnctc.batches import BatchLoader

HUB_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def labelled_folder(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    words = {"a.png": "hello", "sub/b.png": "World", "c.png": "r2d2", "d.png": "caf#", "e.png": "x" * 14}
    for name, word in words.items():
        render_word(word).save(images / name)
    good = png_bytes(render_word("cut"))
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "zero.png").write_bytes(b"")
    lines = [f"{name}\t{word}" for name, word in words.items()]
    lines += ["truncated.png\tcut", "zero.png\tzero", "missing.png\tghost", "a.png\t", "no tab on this line"]
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return images, tmp_path / "labels.tsv", words


def test_make_lmdb_then_read_back(tmp_path, labelled_folder):
    images, labels, words = labelled_folder
    out = tmp_path / "data.lmdb"
    run = subprocess.run([sys.executable, "-m", "cnnctc", "make-lmdb", images, labels, out], env=subprocess_env(),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "5 samples written; skipped 3 unreadable images, 1 empty labels, 1 malformed lines" in run.stdout

    env = lmdb.open(str(out), readonly=True, lock=False)
    with env.begin() as txn:  # the field's keys, 1-based
        assert txn.get(b"num-samples") == b"5"
        assert txn.get(b"label-000000001") == b"hello"
        assert txn.get(b"image-000000001") == (images / "a.png").read_bytes()
        assert txn.get(b"label-000000002") == b"World"
    env.close()

    dataset = LmdbDataset(out, LabelFilter.for_alphabet(HUB_ALPHABET))
    assert [label for _, _, label in dataset.samples] == ["hello", "world", "r2d2"]
    assert dict(dataset.skipped) == {"outside the alphabet": 1, "longer than 13": 1}
    image, target, length = dataset[1]
    np.testing.assert_array_equal(image, preprocess(images / "sub" / "b.png")[0])
    assert length == 5 and target.shape == (13,)
    assert target.tolist() == [HUB_ALPHABET.index(c) for c in "world"] + [36] * 8

    # A case-sensitive alphabet keeps the capital.
    cased = LmdbDataset(out, LabelFilter.for_alphabet(HUB_ALPHABET + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    assert [label for _, _, label in cased.samples] == ["hello", "World", "r2d2"]

    run = subprocess.run([sys.executable, "-m", "cnnctc", "make-lmdb", images, labels, out], env=subprocess_env(),
                         capture_output=True, text=True)
    assert run.returncode == 1 and "already exists" in run.stderr


def test_corrupt_records_are_counted_not_fatal(tmp_path):
    good = png_bytes(render_word("abc"))
    out = tmp_path / "mixed.lmdb"
    write_lmdb(out, [(good, "abc"), (b"\x89PNG broken", "def"), (good, "ghi")])
    env = lmdb.open(str(out), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"label-000000004", b"\xff\xfe not utf-8")
        txn.put(b"num-samples", b"4")
    env.close()
    dataset = LmdbDataset(out, LabelFilter.for_alphabet(HUB_ALPHABET))
    same = LmdbDataset(out, LabelFilter.for_alphabet(HUB_ALPHABET))  # one LMDB opened twice in a process
    same.close()
    assert len(dataset) == 3 and dataset.skipped["corrupt record"] == 1
    with pytest.raises(ImageError):
        dataset.load(1)
    with BatchLoader(dataset, workers=1) as loader:
        [(images, targets, _)] = loader.batches([[1, 0]])  # sample 1 is replaced by the next readable one
    assert loader.corrupt == 1 and targets[0, 0] == HUB_ALPHABET.index("g") and targets[1, 0] == 10
    np.testing.assert_array_equal(images[0], dataset[2][0])
    np.testing.assert_array_equal(images[1], dataset[0][0])


def test_bad_dataset_paths_say_what_is_wrong(tmp_path):
    with pytest.raises(CnnctcError, match="no such LMDB dataset"):
        LmdbDataset(tmp_path / "nope", LabelFilter(HUB_ALPHABET))
    empty = tmp_path / "empty.lmdb"
    lmdb.open(str(empty)).close()  # an LMDB without the field's keys
    with pytest.raises(CnnctcError, match="num-samples"):
        LmdbDataset(empty, LabelFilter(HUB_ALPHABET))
    not_lmdb = tmp_path / "file.txt"
    not_lmdb.write_text("hello")
    with pytest.raises(CnnctcError, match="not an LMDB dataset"):
        LmdbDataset(not_lmdb, LabelFilter(HUB_ALPHABET))
