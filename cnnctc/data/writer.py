"""Building LMDBs in the field's layout: :func:`write_lmdb` and ``make-lmdb`` (:func:`make_lmdb`).

Streaming: the labels file is read line by line and the LMDB is committed whenever the
records written since the last commit reach a byte budget, so memory stays bounded by that
budget (plus one image), whatever the number or size of the images. The result appears at OUT
only when complete (see :mod:`._placing`).
"""
import dataclasses
import logging
import os
import stat
from pathlib import Path

from ..errors import CnnctcError, disk_full, shown
from ..transforms import ImageError, load_image, read_image_file
from ._common import reason
from ._placing import OutputSlot

__all__ = ["write_lmdb", "make_lmdb", "read_labels_file", "MakeLmdbStats", "WRITE_BUDGET_BYTES",
           "MAX_IMAGE_FILE_BYTES"]

log = logging.getLogger(__name__)
_MAP_SIZE = 1 << 40  # address space only; the file grows as data is written
WRITE_BUDGET_BYTES = 32 << 20   # uncommitted record bytes held before a commit
MAX_IMAGE_FILE_BYTES = 64 << 20  # a word image is kilobytes; a larger file is refused unread
_RECORD_OVERHEAD = 64            # bytes of budget per record besides its value (keys, page slots)
LABELS_FORMAT = "'relative/path<TAB>text' (optionally <TAB>lexicon words separated by spaces)"


def _lmdb():
    import lmdb
    return lmdb


def _path_argument(value, name):
    """``value`` as a Path; TypeError/CnnctcError naming the argument for what cannot be one."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), not {type(value).__name__}")
    text = os.fspath(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\0" in text:
        raise CnnctcError(f"{name} {text!r} holds a NUL character; not a valid file name")
    if not text:
        raise CnnctcError(f"{name} is empty; give a path")
    return Path(text)


def _disk_full(exc, folder):
    """Whether a failed write was the disk (or the user's quota) running out of space."""
    if disk_full(exc):
        return True
    try:  # LMDB reports some failed writes as EIO: look at the disk itself
        info = os.statvfs(folder)
        return info.f_bavail * info.f_frsize < 2 * WRITE_BUDGET_BYTES
    except OSError:
        return False


def _write_error(exc, out, slot):
    written = slot.env_path if slot.file_form else slot.env_path / "data.mdb"
    if _disk_full(exc, slot.work):
        return CnnctcError(f"{out}: the disk is full (writing {written} failed: {reason(exc, slot.env_path)}); "
                           f"free some space on the disk holding {out.parent} and run again; nothing was written")
    return CnnctcError(f"{out}: writing the LMDB failed ({reason(exc, slot.env_path)})")


def _write(out, samples, *, overwrite, inputs, contains=(), finished=None, records=None):
    lmdb = _lmdb()
    with OutputSlot(out, overwrite=overwrite, inputs=inputs, contains=contains) as slot:
        count = 0
        try:
            # 0666 minus the umask (0644 under 022): lmdb's default 0755 would make data files executable
            env = lmdb.open(str(slot.env_path), map_size=_MAP_SIZE, subdir=not slot.file_form, mode=0o666,
                            sync=False, metasync=False)
        except lmdb.Error as exc:
            raise CnnctcError(f"{out}: cannot create an LMDB in {out.parent} ({reason(exc, slot.env_path)})") from None
        try:
            txn = env.begin(write=True)
            pending = 0
            try:
                for sample in samples:
                    image, label, lexicon = _checked_sample(sample, count + 1)
                    count += 1
                    label_bytes = label.encode("utf-8")
                    txn.put(b"image-%09d" % count, image)
                    txn.put(b"label-%09d" % count, label_bytes)
                    pending += len(image) + len(label_bytes) + 2 * _RECORD_OVERHEAD
                    if lexicon:
                        words = "\n".join(lexicon).encode("utf-8")
                        txn.put(b"lexicon-%09d" % count, words)
                        pending += len(words) + _RECORD_OVERHEAD
                    if pending >= WRITE_BUDGET_BYTES:
                        txn.commit()
                        txn = env.begin(write=True)
                        pending = 0
                if finished is not None:
                    finished(count)  # may refuse the result: nothing is put in place
                for key, value in (records or {}).items():
                    txn.put(key, value)
                txn.put(b"num-samples", str(count).encode())
                txn.commit()
            except BaseException:
                txn.abort()
                raise
            env.sync(True)
        except (lmdb.Error, OSError) as exc:
            raise _write_error(exc, out, slot) from None
        finally:
            env.close()
        slot.place()
    return count


def write_lmdb(out, samples, *, overwrite=False, inputs=(), records=None):
    """Write (image bytes, label str[, lexicon words]) samples to a new LMDB at ``out``; returns the count.

    The LMDB is built in a hidden work folder beside ``out`` (removed on any error or
    interrupt) and moved into place at the end, re-checking ``out`` then. ``overwrite``
    replaces only an existing LMDB (or an empty folder), never other files, nor a path that is
    or holds one of ``inputs``. A second writer of the same ``out`` is refused while one runs.
    ``records``: further keys (bytes -> bytes) written beside the samples, e.g. how they were made;
    the field's readers look only at ``num-samples``, ``image-*`` and ``label-*``.
    """
    out = _path_argument(out, "out")
    if records and any(not k or k.startswith((b"image-", b"label-", b"lexicon-", b"num-samples")) for k in records):
        raise CnnctcError("records may not use the dataset's own keys (image-, label-, lexicon-, num-samples)")
    return _write(out, samples, overwrite=overwrite, inputs=inputs, records=records)


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
        raise CnnctcError(f"sample {number}: the label {shown(label)} cannot be written as UTF-8") from None
    return bytes(image), label, lexicon


def _open_labels(path):
    """The labels file opened for reading (a regular file, checked without blocking)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise CnnctcError(f"{path}: the labels file is {kind}; give a text file of 'path<TAB>text' lines")
        return open(path, encoding="utf-8-sig")  # a byte-order mark is not part of the first name
    except FileNotFoundError:
        raise CnnctcError(f"{path}: no such labels file") from None
    except PermissionError:
        raise CnnctcError(f"{path}: permission denied (cannot read the labels file)") from None
    except OSError as exc:
        raise CnnctcError(f"{path}: cannot read the labels file ({reason(exc, path)})") from None
    except ValueError:  # an embedded NUL
        raise CnnctcError(f"{path!r}: not a valid file name") from None


def _label_lines(path, f):
    """Yield (line number, image, text, lexicon or None) for each line with a tab, and
    (line number, None, None, None) for each malformed one; blank lines are skipped."""
    number = 0
    try:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if "\t" not in line:
                yield number, None, None, None
                continue
            image, text, *rest = line.split("\t", 2)
            yield number, image, text, (rest[0].split() if rest and rest[0].strip() else None)
    except UnicodeDecodeError as exc:
        line = _first_undecodable_line(path) or number + 1
        raise CnnctcError(f"{path}: not UTF-8 text (line {line}: {exc.reason})") from None
    except OSError as exc:
        raise CnnctcError(f"{path}: cannot read the labels file ({reason(exc, path)})") from None


def _first_undecodable_line(path):
    """The number of the first line of ``path`` that is not UTF-8 (the text reader decodes ahead of
    the line it yields, so its own count can be lines short); None if it cannot be told."""
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return number
    except OSError:
        return None
    return None


def read_labels_file(path):
    """Parse ``relative/path<TAB>text[<TAB>lexicon words separated by spaces]`` lines; returns
    ((image, text, lexicon or None) entries, malformed line numbers).

    Raises :class:`CnnctcError` (one line) for a file that is missing, not a regular file,
    unreadable or not UTF-8.
    """
    pairs, malformed = [], []
    with _open_labels(path) as f:
        for number, image, text, lexicon in _label_lines(path, f):
            if image is None:
                malformed.append(number)
            else:
                pairs.append((image, text, lexicon))
    return pairs, malformed


def count_label_lines(path):
    """The number of lines in a labels file (for a progress bar's total); None if it cannot be read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before opening: a FIFO would block
            return None
        with open(path, "rb") as f:
            count, last = 0, b"\n"
            while chunk := f.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
            return count + (last != b"\n")
    except (OSError, ValueError):
        return None


def read_bounded_image(path):
    """The bytes of an image file, refused unread (ImageError) when larger than MAX_IMAGE_FILE_BYTES."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        info = None  # read_image_file says why
    if info is not None and stat.S_ISREG(info.st_mode) and info.st_size > MAX_IMAGE_FILE_BYTES:
        raise ImageError(f"{path}: the file is {info.st_size:,} bytes, more than the {MAX_IMAGE_FILE_BYTES:,} an "
                         "image may be; not read")
    return read_image_file(path)


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

    Unreadable images (damaged, larger than MAX_IMAGE_FILE_BYTES, not regular files) and
    empty labels are skipped and counted; zero samples is an error and nothing is written.
    ``overwrite`` replaces only an LMDB, never a folder or file holding anything else, the
    inputs, or an LMDB inside ``images_dir``. ``progress(n)`` is called as lines are read.
    """
    images_dir = _path_argument(images_dir, "images_dir")
    labels_file = _path_argument(labels_file, "labels_file")
    out = _path_argument(out, "out")
    if not images_dir.is_dir():
        raise CnnctcError(f"{images_dir}: not a folder")
    stats = MakeLmdbStats()

    def samples(lines):
        for _, relative, text, lexicon in lines:
            if progress:
                progress(1)
            if relative is None:
                stats.malformed += 1
                continue
            if not text.strip():
                stats.empty_label += 1
                continue
            path = images_dir / relative
            try:
                data = read_bounded_image(path)
                load_image(data)
            except ImageError as exc:
                stats.unreadable += 1
                why = str(exc)
                for prefix in (f"{path}: ", "image bytes: "):
                    why = why[len(prefix):] if why.startswith(prefix) else why
                log.warning("skipping %s: %s", path, why)
                continue
            yield data, text, lexicon

    def finished(count):
        if count:
            return
        if not (stats.unreadable or stats.empty_label):
            raise CnnctcError(f"{labels_file}: no usable line; each line must be {LABELS_FORMAT} "
                              f"({stats.malformed} lines without a tab); nothing written")
        raise CnnctcError(f"{labels_file}: none of its samples could be written ({stats}); nothing written")

    from ._placing import check_out
    check_out(out, overwrite, (images_dir, labels_file), (images_dir,))  # refuse before reading anything
    with _open_labels(labels_file) as f:
        stats.written = _write(out, samples(_label_lines(labels_file, f)), overwrite=overwrite,
                               inputs=(images_dir, labels_file), contains=(images_dir,), finished=finished)
    return stats
