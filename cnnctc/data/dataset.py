"""Reading datasets in the field's LMDB format: :class:`LmdbDataset` and the official label filter.

What is checked when (a damaged file is reported in one line naming it, never a SIGBUS):

- on opening: the data file is a regular, non-empty file; its meta page says where its pages
  end, and a file shorter than that (a truncated copy) is refused; ``num-samples`` is a number
  the file can hold; every label is read (one cursor walk over the label pages, the images are
  not touched). This costs what the label scan costs, in every process that opens it.
- on reading a record: the environment is mapped only in a separate process (a small reader
  child here, or a data-loading worker during training), so a damaged page that makes LMDB
  read past the end of the file kills that process, and the caller gets a CnnctcError naming
  the file and the record.
"""
import array
import collections
import collections.abc
import dataclasses
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..errors import CnnctcError
from ..transforms import ImageError, load_image, preprocess_image
from . import _lmdb_reader as wire
from ._common import data_file, regular_size

__all__ = ["LmdbDataset", "LabelFilter", "encode_label", "crash_reason"]

log = logging.getLogger(__name__)
_READER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lmdb_reader.py")
_CRASHES = {getattr(signal, name) for name in ("SIGBUS", "SIGSEGV", "SIGILL", "SIGFPE") if hasattr(signal, name)}


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
        if label.strip(self.alphabet):  # what is left when every alphabet symbol is gone from both ends
            return None, "outside the alphabet"
        return label, None

    @classmethod
    def for_alphabet(cls, alphabet, max_length=13):
        # A case-free alphabet (the hub's) reads labels lower-cased; one with capitals keeps case.
        return cls(alphabet, max_length, lowercase=alphabet == alphabet.lower())


def encode_label(label, classes, max_length, blank):
    """(target (max_length,) int32 padded with ``blank``, length int32) of a kept label."""
    target = np.full(max_length, blank, np.int32)
    target[:len(label)] = [classes[c] for c in label]
    return target, np.int32(len(label))


def crash_reason(returncode):
    """('crash' or 'ended', how) for a process that ended with ``returncode``."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return ("crash" if -returncode in _CRASHES else "ended"), name
    return "ended", f"exit status {returncode}"


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


def _checked_path(path):
    """``path`` as a Path, refused (one line) unless it names an LMDB's regular, non-empty data file."""
    if not os.path.lexists(path) or not path.exists():
        raise CnnctcError(f"{path}: no such LMDB dataset")
    data = data_file(path)
    # Checked before any process opens it: opening a FIFO here would block.
    if regular_size(data, path) == 0:
        raise CnnctcError(f"{path}: not an LMDB dataset ({data.name} is empty)")
    return path


class _ReaderProcess:
    """The parent's end of a ``_lmdb_reader`` child serving the environments of one dataset.

    Requests are serialised (a lock); a forked copy of the parent starts its own child. When the
    child dies, every request raises CnnctcError naming the file and what was being read.
    """

    def __init__(self, paths):
        self.paths = paths
        self._lock = threading.Lock()
        self._proc = None
        self._local = None       # the in-process reader, where no child can be started
        self._dead = None        # the error every request raises once the child has died
        self._start()

    def _start(self):
        self._pid = os.getpid()
        args = [a for p in self.paths for a in (str(p), "1" if p.is_dir() else "0")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen([sys.executable, _READER_SCRIPT, *args], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._stderr, env=env, close_fds=True)
        except OSError as exc:  # no usable interpreter (an embedded Python): read here, unguarded
            log.debug("cannot start an LMDB reader process (%s); reading in this process", exc)
            self._stderr.close()
            try:
                self._local = wire.Reader([str(p) for p in self.paths], [p.is_dir() for p in self.paths])
            except wire.ReaderError as error:
                raise self._error(error) from None
            return
        kind, payload = self._receive("the LMDB's header", 0)
        if kind == wire.ERROR:
            self.close()
            raise self._error_payload(payload)

    def _error(self, error, number=None):
        number = error.number if number is None and error.number is not None else (number or 0)
        return CnnctcError(f"{self.paths[number]}: {error}")

    def _error_payload(self, payload, number=None):
        found = struct.unpack_from("<I", payload)[0]
        text = payload[4:].decode("utf-8", "replace")
        return CnnctcError(f"{self.paths[found if number is None else number]}: {text}")

    def _receive(self, what, number):
        kind, payload = wire.receive(self._proc.stdout)
        if kind is None:
            self._died(what, number)
        return kind, payload

    def _died(self, what, number):
        returncode = self._proc.wait()
        kind, how = crash_reason(returncode)
        path = self.paths[number]
        if kind == "crash":
            self._dead = CnnctcError(f"{path}: the LMDB is damaged (reading {what} crashes a reader with {how}); "
                                     "rebuild it")
        else:
            self._stderr.seek(0)
            detail = " ".join(self._stderr.read()[-400:].decode("utf-8", "replace").split())
            self._dead = CnnctcError(f"{path}: the process reading the LMDB ended ({how}) while reading {what}"
                                     f"{': ' + detail if detail else ''}; run again")
        raise self._dead

    def _request(self, kind, payload, what, number):
        if self._dead is not None:
            raise self._dead
        if self._pid != os.getpid():  # a forked copy: the pipes are the parent's
            self._proc = None
            self._start()
        try:
            wire.send(self._proc.stdin, kind, payload)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died(what, number)
        return self._receive(what, number)

    def labels(self, number, consume):
        """The declared num-samples (bytes or None) and the record count, after calling
        ``consume(lengths, blob)`` for each chunk of labels 1, 2, ... (length -1: missing)."""
        if self._local is not None:
            try:
                raw, entries, chunks = self._local.labels(number)
                for lengths, blob in chunks:
                    consume(lengths, blob)
            except wire.ReaderError as error:
                raise self._error(error, number) from None
            return raw, entries
        with self._lock:
            kind, payload = self._request(wire.SCAN, b"%d" % number, "its labels", number)
            if kind == wire.ERROR:
                raise self._error_payload(payload, number)
            size, entries = struct.unpack_from("<qQ", payload)
            raw = None if size < 0 else payload[16:16 + size]
            try:
                while True:
                    kind, payload = self._receive("its labels", number)
                    if kind == wire.ERROR:
                        raise self._error_payload(payload, number)
                    if kind == wire.OK:
                        return raw, entries
                    count = struct.unpack_from("<I", payload)[0]
                    lengths = array.array("i")
                    lengths.frombytes(payload[4:4 + 4 * count])
                    consume(lengths, payload[4 + 4 * count:])
            except BaseException:  # stopped mid-stream (e.g. Ctrl-C): the pipe is out of step now
                if self._dead is None:
                    self._dead = CnnctcError(f"{self.paths[number]}: reading its labels was interrupted; open it "
                                             "again")
                self._stop()
                raise

    def get(self, number, key):
        """The value of ``key`` in environment ``number``, or None."""
        if self._local is not None:
            try:
                return self._local.get(number, key)
            except wire.ReaderError as error:
                raise self._error(error, number) from None
        with self._lock:
            kind, payload = self._request(wire.GET, struct.pack("<I", number) + key, key.decode("ascii", "replace"),
                                          number)
        if kind == wire.ERROR:
            raise self._error_payload(payload, number)
        return None if kind == wire.MISSING else payload

    def _stop(self):
        proc = self._proc
        if proc is not None and self._pid == os.getpid() and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self):
        """End the child (it also ends by itself when this process goes away)."""
        if self._local is not None:
            self._local.close()
            self._local = None
        proc, self._proc = self._proc, None
        if proc is None or self._pid != os.getpid():
            return
        try:
            wire.send(proc.stdin, wire.QUIT)
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        self._stderr.close()


class _Samples(collections.abc.Sequence):
    """``dataset.samples[i]`` -> (dataset number, key number, label) of kept sample ``i``."""

    def __init__(self, dataset):
        self._dataset = dataset

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._dataset.row(index)


class LmdbDataset:
    """Random access to the kept samples of one or more LMDBs.

    ``dataset[i]`` -> (image (3, 32, 100) float32, target (max_length,) int32 padded with the
    blank, length int32); ``dataset.skipped`` counts what the filter dropped, by reason;
    ``dataset.samples`` lists (dataset number, key number, label) of the kept ones. Raises
    :class:`CnnctcError` naming the path for a damaged or implausible environment; see the
    module's docstring for what is checked when.
    """

    def __init__(self, paths, label_filter, *, preprocess_config=None):
        from ..registry import load_manifest
        self.filter = label_filter
        self.config = preprocess_config or load_manifest().preprocess
        self.paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        self.skipped = collections.Counter()
        self.corrupt = 0           # images found unreadable while reading
        self.num_samples = []      # each LMDB's declared num-samples
        self._class = {c: i for i, c in enumerate(label_filter.alphabet)}
        # The kept samples, compactly: a Python tuple per sample would cost ~150 bytes each.
        self._numbers = array.array("H")
        self._keys = array.array("I")
        self._label_ends = array.array("q")
        self._label_bytes = bytearray()
        self._reader = None
        for path in self.paths:
            _checked_path(path)
        try:
            self._reader = _ReaderProcess(self.paths)
            for number in range(len(self.paths)):
                self._scan(number)
        except BaseException:
            self.close()
            raise
        self._label_bytes = bytes(self._label_bytes)
        self.samples = _Samples(self)

    def _scan(self, number):
        apply, skipped = self.filter.apply, self.skipped
        numbers, keys, ends, out = self._numbers, self._keys, self._label_ends, self._label_bytes
        next_key = 1

        def consume(lengths, blob):
            nonlocal next_key
            key, start = next_key, 0
            for length in lengths:
                if length < 0:
                    skipped["corrupt record"] += 1
                else:
                    raw = blob[start:start + length]
                    start += length
                    try:
                        label, why = apply(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        label, why = None, "corrupt record"
                    if why:
                        skipped[why] += 1
                    else:
                        out.extend(label.encode("utf-8"))
                        ends.append(len(out))
                        keys.append(key)
                key += 1
            next_key = key
            numbers.extend(array.array("H", [number]) * (len(keys) - len(numbers)))

        raw, entries = self._reader.labels(number, consume)
        self.num_samples.append(_sample_count(raw, self.paths[number], entries))

    def __len__(self):
        return len(self._keys)

    def row(self, index):
        """(dataset number, key number, label) of kept sample ``index``."""
        if index < 0:
            index += len(self._keys)
        if not 0 <= index < len(self._keys):
            raise IndexError(f"sample {index} is outside the {len(self._keys)} kept samples")
        start = self._label_ends[index - 1] if index else 0
        label = self._label_bytes[start:self._label_ends[index]].decode("utf-8")
        return self._numbers[index], self._keys[index], label

    def label(self, index):
        """The label of kept sample ``index``, as the filter returned it (no image is read)."""
        return self.row(index)[2]

    def key(self, index):
        """The 1-based LMDB key number (``label-%09d``) of kept sample ``index``."""
        return self.row(index)[1]

    def _value(self, number, prefix, key):
        """The bytes stored under ``<prefix>-<key>`` in dataset ``number``, or None."""
        return self._reader.get(number, b"%s-%09d" % (prefix, key))

    def record(self, index):
        """(image bytes, label) of kept sample ``index``."""
        number, key, label = self.row(index)
        data = self._value(number, b"image", key)
        if data is None:
            raise ImageError(f"{self.paths[number]}: image-{key:09d} is missing")
        return data, label

    def lexicon(self, index):
        """The per-image lexicon of kept sample ``index`` (key ``lexicon-%09d``, one word per line), or None."""
        number, key, _ = self.row(index)
        raw = self._value(number, b"lexicon", key)
        if raw is None:
            return None
        words = raw.decode("utf-8", errors="replace").split("\n")
        return [w for w in words if w.strip()] or None

    def encode(self, label):
        """(target (max_length,) int32 padded with the blank, length int32) of a kept label."""
        return encode_label(label, self._class, self.filter.max_length, len(self.filter.alphabet))

    def load(self, index):
        """(image array, label) of sample ``index``; raises ImageError for a corrupt image."""
        data, label = self.record(index)
        return decode_record(data, self.config, self.paths[self._numbers[index]], self._keys[index]), label

    def __getitem__(self, index):
        image, label = self.load(index)
        target, length = self.encode(label)
        return image, target, length

    def close(self):
        """End the process that reads the LMDBs."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __del__(self):
        reader = getattr(self, "_reader", None)
        if reader is not None:
            try:
                reader.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def decode_record(data, config, path, key):
    """The preprocessed image of record ``image-<key>`` of ``path``; ImageError naming it when corrupt."""
    try:
        image = load_image(data)
    except ImageError as exc:
        why = str(exc).removeprefix("image bytes: ")
        raise ImageError(f"{path}: image-{key:09d}: {why}") from None
    return preprocess_image(image, config)
