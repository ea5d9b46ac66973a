"""Datasets in the field's LMDB format (Baek et al.'s create_lmdb_dataset.py, the model zoo's too).

An LMDB environment holds ``num-samples`` and, 1-based, ``image-%09d`` (encoded image bytes) and
``label-%09d`` (UTF-8 text). The reader applies the official label filtering and the shared
preprocessing; corrupt records are counted and skipped, never fatal.
"""
import collections
import dataclasses
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import CnnctcError
from .transforms import ImageError, load_image, preprocess_image

__all__ = ["write_lmdb", "make_lmdb", "read_labels_file", "LmdbDataset", "LabelFilter", "MakeLmdbStats"]

log = logging.getLogger(__name__)
_MAP_SIZE = 1 << 40  # address space only; the file grows as data is written


def _lmdb():
    import lmdb
    return lmdb


# LMDB refuses to open one environment twice in a process (train and valid may be the same
# path), so read-only environments are shared and counted.
_OPEN = {}


def _open_readonly(path):
    key = os.path.realpath(path)
    if key in _OPEN:
        env, users = _OPEN[key]
        _OPEN[key] = (env, users + 1)
        return env
    if not path.exists():
        raise CnnctcError(f"{path}: no such LMDB dataset")
    try:
        env = _lmdb().open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                           subdir=path.is_dir())
    except _lmdb().Error as exc:
        raise CnnctcError(f"{path}: not an LMDB dataset ({exc})") from None
    _OPEN[key] = (env, 1)
    return env


def _release(path):
    key = os.path.realpath(path)
    env, users = _OPEN.get(key, (None, 0))
    if users > 1:
        _OPEN[key] = (env, users - 1)
    elif env is not None:
        del _OPEN[key]
        env.close()


def write_lmdb(out, samples, *, overwrite=False):
    """Write (image bytes, label) pairs to a new LMDB at ``out`` atomically; returns the count."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise CnnctcError(f"{out} already exists (remove it first)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    try:
        env = _lmdb().open(str(tmp), map_size=_MAP_SIZE)
        try:
            txn = env.begin(write=True)
            for image, label in samples:
                count += 1
                txn.put(b"image-%09d" % count, bytes(image))
                txn.put(b"label-%09d" % count, label.encode("utf-8"))
                if count % 1000 == 0:
                    txn.commit()
                    txn = env.begin(write=True)
            txn.put(b"num-samples", str(count).encode())
            txn.commit()
        finally:
            env.close()
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count


def read_labels_file(path):
    """Parse ``relative/path<TAB>text`` lines; returns (pairs, malformed line numbers)."""
    pairs, malformed = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if "\t" not in line:
                malformed.append(number)
                continue
            image, text = line.split("\t", 1)
            pairs.append((image, text))
    return pairs, malformed


@dataclasses.dataclass
class MakeLmdbStats:
    written: int = 0
    unreadable: int = 0
    empty_label: int = 0
    malformed: int = 0

    def __str__(self):
        return (f"{self.written} samples written; skipped {self.unreadable} unreadable images, "
                f"{self.empty_label} empty labels, {self.malformed} malformed lines")


def make_lmdb(images_dir, labels_file, out, *, overwrite=False, progress=None):
    """Build an LMDB from a folder of images and a labels file; returns :class:`MakeLmdbStats`."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise CnnctcError(f"{images_dir}: not a folder")
    try:
        pairs, malformed = read_labels_file(labels_file)
    except FileNotFoundError:
        raise CnnctcError(f"{labels_file}: no such labels file") from None
    except UnicodeDecodeError as exc:
        raise CnnctcError(f"{labels_file}: not UTF-8 text ({exc})") from None
    stats = MakeLmdbStats(malformed=len(malformed))

    def samples():
        for relative, text in pairs:
            if progress:
                progress(1)
            if not text.strip():
                stats.empty_label += 1
                continue
            path = images_dir / relative
            try:
                data = path.read_bytes()
                load_image(data)
            except (OSError, ImageError) as exc:
                stats.unreadable += 1
                log.warning("skipping %s: %s", path, exc)
                continue
            yield data, text

    stats.written = write_lmdb(out, samples(), overwrite=overwrite)
    return stats


@dataclasses.dataclass(frozen=True)
class LabelFilter:
    """The official rule: labels lower-cased (for a case-free alphabet), kept when 1..max_length
    characters long and made only of alphabet symbols."""
    alphabet: str
    max_length: int = 13
    lowercase: bool = True

    def apply(self, label):
        """(normalised label, None) when kept, else (None, reason)."""
        if self.lowercase:
            label = label.lower()
        if not label:
            return None, "empty label"
        if len(label) > self.max_length:
            return None, f"longer than {self.max_length}"
        if any(c not in self.alphabet for c in label):
            return None, "outside the alphabet"
        return label, None

    @classmethod
    def for_alphabet(cls, alphabet, max_length=13):
        # A case-free alphabet (the hub's) reads labels lower-cased; one with capitals keeps case.
        return cls(alphabet, max_length, lowercase=alphabet == alphabet.lower())


class LmdbDataset:
    """Random access to the kept samples of one or more LMDBs.

    ``dataset[i]`` -> (image (3, 32, 100) float32, target (max_length,) int32 padded with the
    blank, length int32); ``dataset.skipped`` counts what the filter dropped, by reason.
    """

    def __init__(self, paths, label_filter, *, preprocess_config=None):
        from .manifest import load_manifest
        self.filter = label_filter
        self.config = preprocess_config or load_manifest().preprocess
        self.paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        self._envs = []
        self.samples = []          # (env index, key number, label)
        self.skipped = collections.Counter()
        self.corrupt = 0           # images found unreadable while reading
        self._class = {c: i for i, c in enumerate(label_filter.alphabet)}
        try:
            for number, path in enumerate(self.paths):
                self._envs.append(_open_readonly(path))
                self._scan(number)
        except BaseException:
            self.close()
            raise

    def _scan(self, number):
        with self._envs[number].begin() as txn:
            raw = txn.get(b"num-samples")
            try:
                count = int(raw)
            except (TypeError, ValueError):
                raise CnnctcError(f"{self.paths[number]}: no valid 'num-samples' key") from None
            for key in range(1, count + 1):
                raw = txn.get(b"label-%09d" % key)
                try:
                    label = raw.decode("utf-8")
                except (AttributeError, UnicodeDecodeError):
                    self.skipped["corrupt record"] += 1
                    continue
                label, reason = self.filter.apply(label)
                if reason:
                    self.skipped[reason] += 1
                else:
                    self.samples.append((number, key, label))

    def __len__(self):
        return len(self.samples)

    def record(self, index):
        """(image bytes, label) of kept sample ``index``."""
        number, key, label = self.samples[index]
        with self._envs[number].begin() as txn:
            data = txn.get(b"image-%09d" % key)
        if data is None:
            raise ImageError(f"{self.paths[number]}: image-{key:09d} is missing")
        return data, label

    def encode(self, label):
        target = np.full(self.filter.max_length, len(self.filter.alphabet), np.int32)
        target[:len(label)] = [self._class[c] for c in label]
        return target, np.int32(len(label))

    def load(self, index):
        """(image array, label) of sample ``index``; raises ImageError for a corrupt image."""
        data, label = self.record(index)
        return preprocess_image(load_image(data), self.config), label

    def __getitem__(self, index):
        image, label = self.load(index)
        target, length = self.encode(label)
        return image, target, length

    def close(self):
        """Release the LMDB environments (shared ones stay open for their other users)."""
        for path in self.paths[:len(self._envs)]:
            _release(path)
        self._envs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
