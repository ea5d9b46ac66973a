"""Datasets in the field's LMDB format (Baek et al.'s create_lmdb_dataset.py, the model zoo's too).

An LMDB environment holds ``num-samples`` and, 1-based, ``image-%09d`` (encoded image bytes) and
``label-%09d`` (UTF-8 text). The reader applies the official label filtering and the shared
preprocessing; corrupt records are counted and skipped, never fatal. An environment that does
not fit its file (a truncated copy) or declares more samples than it holds is refused before
anything is read from it.
"""
import collections
import dataclasses
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np

from .errors import CnnctcError
from .transforms import ImageError, load_image, preprocess_image, read_image_file

__all__ = ["write_lmdb", "make_lmdb", "read_labels_file", "LmdbDataset", "LabelFilter", "MakeLmdbStats"]

log = logging.getLogger(__name__)
_MAP_SIZE = 1 << 40  # address space only; the file grows as data is written
_LMDB_MAGIC = b"\xde\xc0\xef\xbe"  # MDB_meta.mm_magic, little-endian, after the page header
_LMDB_FILES = {"data.mdb", "lock.mdb"}


def _lmdb():
    import lmdb
    return lmdb


def _reason(exc, path):
    """An lmdb or OS error as a short reason (without the path lmdb puts in front)."""
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    prefix = f"{os.fspath(path)}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _data_file(path):
    return path / "data.mdb" if path.is_dir() else path


def _regular_size(path, what):
    """Size of a regular file; CnnctcError naming ``what`` otherwise (never opens it)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CnnctcError(f"{what}: not an LMDB dataset (no {path.name} in it)") from None
    except OSError as exc:
        raise CnnctcError(f"{what}: cannot read it ({_reason(exc, path)})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CnnctcError(f"{what}: not an LMDB dataset ({path} is not a regular file)")
    return info.st_size


def _is_lmdb_file(path):
    """Whether a regular file starts with an LMDB meta page (read without blocking)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return False
    return head[16:20] == _LMDB_MAGIC or head[12:16] == _LMDB_MAGIC


def _is_lmdb_folder(path):
    """A folder holding an LMDB environment and nothing else (what write_lmdb makes)."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    return "data.mdb" in names and names <= _LMDB_FILES and _is_lmdb_file(path / "data.mdb")


# LMDB refuses to open one environment twice in a process (train and valid may be the same
# path), so read-only environments are shared and counted.
_OPEN = {}


def _check_fits(env, path, data_file):
    """Refuse an environment whose pages do not all lie inside its file: reading a page past the
    end of a memory-mapped file kills the process with SIGBUS."""
    size = _regular_size(data_file, path)
    try:
        pages = env.info()["last_pgno"] + 1
        need = pages * env.stat()["psize"]
    except _lmdb().Error as exc:
        raise CnnctcError(f"{path}: the LMDB is damaged ({_reason(exc, path)}); rebuild it") from None
    if size < need:
        raise CnnctcError(f"{path}: the LMDB is damaged ({data_file.name} is {size:,} bytes, needs {need:,}); "
                          "rebuild it")


# Run in a child process by _probe: walks every record of an environment, touching the last byte
# of every key and value. A damaged page makes LMDB read past the end of the memory-mapped file,
# which kills the reading process with SIGBUS; here only the child dies. Every page a later read
# touches lies inside the file once this walk succeeds (and the walk copies nothing, so it costs
# little more than the label scan). Exit 3 with a reason on the last line means damaged.
_PROBE = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # dying here must not leave a core file behind
import lmdb
path, subdir = sys.argv[1], sys.argv[2] == "1"
try:
    env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, subdir=subdir)
    with env.begin(buffers=True) as txn:
        for key, value in txn.cursor():
            key[-1]
            if len(value):
                value[-1]
except lmdb.Error as exc:
    print(exc)
    sys.exit(3)
print("ok")
"""
_PROBED = set()


def _probe(path, data_file):
    """Refuse an environment whose records do not all lie inside its file (checked in a child)."""
    import signal
    import subprocess
    import sys
    info = os.stat(data_file)
    key = (os.path.realpath(data_file), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key in _PROBED:
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    args = [sys.executable, "-c", _PROBE, str(path), "1" if path.is_dir() else "0"]
    try:
        run = subprocess.run(args, capture_output=True, text=True, errors="replace", env=env,
                             stdin=subprocess.DEVNULL)
    except OSError as exc:  # no usable interpreter (an embedded Python): the size check still holds
        log.debug("could not check %s in a child process: %s", path, exc)
        return
    last = (run.stdout.strip().splitlines() or [""])[-1]
    if run.returncode < 0:
        try:
            name = signal.Signals(-run.returncode).name
        except ValueError:
            name = f"signal {-run.returncode}"
        raise CnnctcError(f"{path}: the LMDB is damaged (reading it crashes with {name}); rebuild it")
    if run.returncode == 3:
        raise CnnctcError(f"{path}: the LMDB is damaged ({_reason(last, path)}); rebuild it")
    if run.returncode != 0:
        log.debug("could not check %s in a child process: %s", path, run.stderr.strip()[-300:])
        return
    _PROBED.add(key)


def _open_readonly(path):
    key = os.path.realpath(path)
    if key in _OPEN:
        env, users = _OPEN[key]
        _OPEN[key] = (env, users + 1)
        return env
    if not os.path.lexists(path) or not path.exists():
        raise CnnctcError(f"{path}: no such LMDB dataset")
    data_file = _data_file(path)
    if _regular_size(data_file, path) == 0:  # checked before opening: a FIFO here would block
        raise CnnctcError(f"{path}: not an LMDB dataset ({data_file.name} is empty)")
    try:
        env = _lmdb().open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                           subdir=path.is_dir())
    except _lmdb().Error as exc:
        raise CnnctcError(f"{path}: not an LMDB dataset ({_reason(exc, path)})") from None
    try:
        _check_fits(env, path, data_file)
        _probe(path, data_file)
    except BaseException:
        env.close()
        raise
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


def _inside(path, folder):
    """Whether ``path`` is ``folder`` or lies under it (real paths)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_out(out, overwrite, inputs=()):
    """Refuse an OUT that writing an LMDB there could lose user data by replacing."""
    if not os.path.lexists(out):
        parent = out.parent
        if not parent.is_dir():
            if os.path.lexists(parent):
                raise CnnctcError(f"{out}: {parent} is not a folder; choose another OUT")
            raise CnnctcError(f"{out}: the folder {parent} does not exist; create it first or choose another OUT")
        return
    for given in inputs:
        if given is not None and _inside(given, out):
            how = "is" if os.path.realpath(given) == os.path.realpath(out) else "holds"
            raise CnnctcError(f"{out} {how} the input {given}; refusing to replace it, choose another OUT")
    if not overwrite:
        raise CnnctcError(f"{out} already exists (choose another OUT, or replace it with --overwrite if it is an "
                          "LMDB you no longer need)")
    if out.is_symlink():
        raise CnnctcError(f"{out} is a symbolic link; not replaced (remove it or choose another OUT)")
    if out.is_dir():
        try:
            empty = not os.listdir(out)
        except OSError as exc:
            raise CnnctcError(f"{out}: cannot read the folder ({_reason(exc, out)})") from None
        if not empty and not _is_lmdb_folder(out):
            raise CnnctcError(f"{out} is a folder holding other files, not an LMDB; --overwrite replaces only an "
                              "LMDB (a folder of data.mdb and lock.mdb); choose another OUT")
    elif not _is_lmdb_file(out):
        raise CnnctcError(f"{out} exists and is not an LMDB; --overwrite replaces only an LMDB; "
                          "choose another OUT")


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def _put_in_place(tmp, out):
    """Move the finished ``tmp`` to ``out``, replacing an existing (checked) ``out``."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    old = tmp.with_name(tmp.name + ".old")
    if os.path.lexists(old):
        raise CnnctcError(f"{old} is in the way; remove it and try again")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    _remove(old)


def write_lmdb(out, samples, *, overwrite=False, inputs=()):
    """Write (image bytes, label str) pairs to a new LMDB at ``out`` atomically; returns the count.

    The LMDB is built under a temporary name beside ``out`` (removed on any error or interrupt)
    and renamed into place. ``overwrite`` replaces only an existing LMDB (or an empty folder),
    never other files, nor a path that is or holds one of ``inputs``.
    """
    lmdb = _lmdb()
    out = Path(out)
    _check_out(out, overwrite, inputs)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise CnnctcError(f"{out}: cannot write in {out.parent} ({_reason(exc, out.parent)})") from None
    count = 0
    try:
        try:
            env = lmdb.open(str(tmp), map_size=_MAP_SIZE)
        except lmdb.Error as exc:
            raise CnnctcError(f"{out}: cannot create an LMDB in {out.parent} ({_reason(exc, tmp)})") from None
        try:
            txn = env.begin(write=True)
            try:
                for sample in samples:
                    image, label, lexicon = _checked_sample(sample, count + 1)
                    count += 1
                    txn.put(b"image-%09d" % count, image)
                    txn.put(b"label-%09d" % count, label.encode("utf-8"))
                    if lexicon:
                        txn.put(b"lexicon-%09d" % count, "\n".join(lexicon).encode("utf-8"))
                    if count % 1000 == 0:
                        txn.commit()
                        txn = env.begin(write=True)
                txn.put(b"num-samples", str(count).encode())
                txn.commit()
            except BaseException:
                txn.abort()
                raise
        except lmdb.Error as exc:
            raise CnnctcError(f"{out}: writing the LMDB failed ({_reason(exc, tmp)})") from None
        finally:
            env.close()
        try:
            _put_in_place(tmp, out)
        except OSError as exc:
            raise CnnctcError(f"{out}: cannot move the new LMDB into place ({_reason(exc, out)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count


def _checked_sample(sample, number):
    try:
        image, label, *rest = sample
        if len(rest) > 1:
            raise ValueError
    except (TypeError, ValueError):
        raise CnnctcError(f"sample {number}: expected an (image bytes, label) pair, or (image bytes, label, "
                          "lexicon words)") from None
    lexicon = list(rest[0]) if rest and rest[0] is not None else None
    if lexicon is not None and not all(isinstance(w, str) and w and not set(w) & set("\n\r\0") for w in lexicon):
        raise CnnctcError(f"sample {number}: a lexicon is a list of non-empty one-line words")
    if not isinstance(label, str):
        raise CnnctcError(f"sample {number}: the label must be text (str), not {type(label).__name__}")
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise CnnctcError(f"sample {number}: the image must be encoded bytes, not {type(image).__name__}")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise CnnctcError(f"sample {number}: the label {label!r} cannot be written as UTF-8") from None
    return bytes(image), label, lexicon


def read_labels_file(path):
    """Parse ``relative/path<TAB>text[<TAB>lexicon words separated by spaces]`` lines; returns
    ((image, text, lexicon or None) entries, malformed line numbers).

    Raises :class:`CnnctcError` (one line) for a file that is missing, not a regular file,
    unreadable or not UTF-8.
    """
    pairs, malformed = [], []
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise CnnctcError(f"{path}: the labels file is {kind}; give a text file of 'path<TAB>text' lines")
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first name
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                if "\t" not in line:
                    malformed.append(number)
                    continue
                image, text, *rest = line.split("\t", 2)
                pairs.append((image, text, rest[0].split() if rest and rest[0].strip() else None))
    except FileNotFoundError:
        raise CnnctcError(f"{path}: no such labels file") from None
    except PermissionError:
        raise CnnctcError(f"{path}: permission denied (cannot read the labels file)") from None
    except OSError as exc:
        raise CnnctcError(f"{path}: cannot read the labels file ({_reason(exc, path)})") from None
    except UnicodeDecodeError as exc:
        raise CnnctcError(f"{path}: not UTF-8 text ({exc})") from None
    except ValueError:  # an embedded NUL
        raise CnnctcError(f"{path!r}: not a valid file name") from None
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
    """Build an LMDB from a folder of images and a labels file; returns :class:`MakeLmdbStats`.

    Unreadable images (damaged, too large, not regular files) and empty labels are skipped and
    counted. ``overwrite`` replaces only an LMDB, never a folder or file holding anything else
    or the inputs.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise CnnctcError(f"{images_dir}: not a folder")
    inputs = (images_dir, labels_file)
    _check_out(Path(out), overwrite, inputs)  # refuse before reading anything
    pairs, malformed = read_labels_file(labels_file)
    stats = MakeLmdbStats(malformed=len(malformed))

    def samples():
        for relative, text, lexicon in pairs:
            if progress:
                progress(1)
            if not text.strip():
                stats.empty_label += 1
                continue
            path = images_dir / relative
            try:
                data = read_image_file(path)
                load_image(data)
            except ImageError as exc:
                stats.unreadable += 1
                reason = str(exc)
                for prefix in (f"{path}: ", "image bytes: "):
                    reason = reason[len(prefix):] if reason.startswith(prefix) else reason
                log.warning("skipping %s: %s", path, reason)
                continue
            yield data, text, lexicon

    stats.written = write_lmdb(out, samples(), overwrite=overwrite, inputs=inputs)
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


def _sample_count(raw, path, entries):
    """The declared ``num-samples``, checked against the records the environment holds."""
    text = raw.decode("ascii", "replace").strip() if raw is not None else ""
    if not text.isdigit() or not text.isascii():
        found = f" (it is {text[:20]!r})" if raw is not None else ""
        raise CnnctcError(f"{path}: no valid 'num-samples' key{found}; not a dataset in the field's format")
    count = int(text)
    # Every sample the reader can keep needs at least its label record (the field writes two per
    # sample, plus num-samples); a larger count is damage, and scanning it would take forever.
    if count > max(entries - 1, 0):
        raise CnnctcError(f"{path}: num-samples says {count:,} samples but the LMDB holds only {entries:,} "
                          "records (2 per sample); it is damaged or incomplete; rebuild it")
    return count


class LmdbDataset:
    """Random access to the kept samples of one or more LMDBs.

    ``dataset[i]`` -> (image (3, 32, 100) float32, target (max_length,) int32 padded with the
    blank, length int32); ``dataset.skipped`` counts what the filter dropped, by reason.
    Raises :class:`CnnctcError` naming the path for a damaged or implausible environment.
    """

    def __init__(self, paths, label_filter, *, preprocess_config=None):
        from .registry import load_manifest
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

    def _damaged(self, number, exc):
        path = self.paths[number]
        return CnnctcError(f"{path}: the LMDB is damaged ({_reason(exc, path)}); rebuild it")

    def _scan(self, number):
        env = self._envs[number]
        try:
            entries = env.stat()["entries"]
            with env.begin() as txn:
                count = _sample_count(txn.get(b"num-samples"), self.paths[number], entries)
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
        except _lmdb().Error as exc:
            raise self._damaged(number, exc) from None

    def __len__(self):
        return len(self.samples)

    def _value(self, number, prefix, key):
        """The bytes stored under ``<prefix>-<key>`` in dataset ``number``, or None."""
        try:
            with self._envs[number].begin() as txn:
                return txn.get(b"%s-%09d" % (prefix, key))
        except _lmdb().Error as exc:
            raise self._damaged(number, exc) from None

    def record(self, index):
        """(image bytes, label) of kept sample ``index``."""
        number, key, label = self.samples[index]
        data = self._value(number, b"image", key)
        if data is None:
            raise ImageError(f"{self.paths[number]}: image-{key:09d} is missing")
        return data, label

    def lexicon(self, index):
        """The per-image lexicon of kept sample ``index`` (key ``lexicon-%09d``, one word per line), or None."""
        number, key, _ = self.samples[index]
        raw = self._value(number, b"lexicon", key)
        if raw is None:
            return None
        words = raw.decode("utf-8", errors="replace").split("\n")
        return [w for w in words if w.strip()] or None

    def encode(self, label):
        target = np.full(self.filter.max_length, len(self.filter.alphabet), np.int32)
        target[:len(label)] = [self._class[c] for c in label]
        return target, np.int32(len(label))

    def load(self, index):
        """(image array, label) of sample ``index``; raises ImageError for a corrupt image."""
        data, label = self.record(index)
        try:
            image = load_image(data)
        except ImageError as exc:
            number, key, _ = self.samples[index]
            reason = str(exc).removeprefix("image bytes: ")
            raise ImageError(f"{self.paths[number]}: image-{key:09d}: {reason}") from None
        return preprocess_image(image, self.config), label

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
