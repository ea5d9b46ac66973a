"""Reading LMDB environments in the field's layout, in a process of its own.

A damaged page makes LMDB read past the end of its memory-mapped file, which kills the reading
process with SIGBUS (or SIGSEGV); no Python code can catch that. So the package never maps a
dataset in the user's process: :class:`Reader` runs here, in a small child that serves the
parent over a pipe (``python _lmdb_reader.py PATH SUBDIR ...``), or in a data-loading worker;
when it dies, the parent reports the damage. Imports only the standard library and lmdb, so
that the child starts in milliseconds.

Messages both ways: one kind byte, an 8-byte little-endian length, then the payload.
"""
import array
import os
import signal
import struct
import sys

import lmdb

OK, ERROR, LABELS, VALUE, MISSING = b"K", b"E", b"L", b"V", b"M"
SCAN, GET, QUIT = b"S", b"G", b"Q"
LABEL_CHUNK = 1 << 16
_HEADER = struct.Struct("<cQ")


class ReaderError(Exception):
    """An lmdb error or a damaged environment; ``str`` is the reason (no path), ``number`` the
    environment it concerns (None: the one asked about)."""

    def __init__(self, reason, number=None):
        super().__init__(reason)
        self.number = number


def _reason(exc, path):
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


class Reader:
    """Read-only environments opened for reading records: ``paths`` with their ``subdir`` flags."""

    def __init__(self, paths, subdirs):
        self.envs = []
        for number, (path, subdir) in enumerate(zip(paths, subdirs)):
            try:
                env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, subdir=subdir,
                                max_dbs=0)
            except lmdb.Error as exc:
                self.close()
                raise ReaderError(f"not an LMDB dataset ({_reason(exc, path)})", number) from None
            self.envs.append(env)
            try:
                self._check_fits(env, path, subdir)
            except ReaderError as exc:
                self.close()
                raise ReaderError(str(exc), number) from None

    @staticmethod
    def _check_fits(env, path, subdir):
        """Refuse an environment whose pages do not all lie inside its file (a truncated copy)."""
        data_file = os.path.join(path, "data.mdb") if subdir else path
        try:
            size = os.stat(data_file).st_size
            need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        except lmdb.Error as exc:
            raise ReaderError(f"the LMDB is damaged ({_reason(exc, path)}); rebuild it") from None
        if size < need:
            raise ReaderError(f"the LMDB is damaged ({os.path.basename(data_file)} is {size:,} bytes, needs "
                              f"{need:,}); rebuild it")

    def entries(self, number):
        return self.envs[number].stat()["entries"]

    def get(self, number, key):
        """The bytes stored under ``key`` in environment ``number``, or None."""
        try:
            with self.envs[number].begin() as txn:
                return txn.get(key)
        except lmdb.Error as exc:
            raise ReaderError(f"the LMDB is damaged ({_reason(exc, '')}); rebuild it") from None

    def labels(self, number):
        """(declared num-samples bytes or None, record count, chunks) where each chunk is
        (lengths array('i'), joined bytes) of the next LABEL_CHUNK labels 1, 2, ... in order;
        a missing label has length -1. Walks the labels with one cursor, never the images."""
        env = self.envs[number]
        try:
            entries = env.stat()["entries"]
            txn = env.begin(buffers=False)
            raw = txn.get(b"num-samples")
        except lmdb.Error as exc:
            raise ReaderError(f"the LMDB is damaged ({_reason(exc, '')}); rebuild it") from None
        return raw, entries, self._label_chunks(txn, raw, entries)

    @staticmethod
    def _label_chunks(txn, raw, entries):
        text = raw.decode("ascii", "replace").strip() if raw is not None else ""
        count = int(text) if text.isdigit() and text.isascii() and int(text) <= max(entries - 1, 0) else 0
        lengths, values = array.array("i"), []
        expected, chunk_end = 1, LABEL_CHUNK  # the next label number; the last of this chunk
        try:
            cursor = txn.cursor()
            if count and cursor.set_range(b"label-%09d" % 1):
                for key, value in cursor:  # in key order, which is number order (zero-padded)
                    if not key.startswith(b"label-"):
                        break
                    try:
                        number = int(key[6:])
                    except ValueError:
                        continue
                    if number > count:
                        break
                    while expected < number:  # labels missing in between
                        lengths.append(-1)
                        expected += 1
                        if expected > chunk_end:
                            yield lengths, b"".join(values)
                            lengths, values, chunk_end = array.array("i"), [], chunk_end + LABEL_CHUNK
                    if number < expected:
                        continue
                    lengths.append(len(value))
                    values.append(value)
                    expected += 1
                    if expected > chunk_end:
                        yield lengths, b"".join(values)
                        lengths, values, chunk_end = array.array("i"), [], chunk_end + LABEL_CHUNK
            while expected <= count:
                lengths.append(-1)
                expected += 1
                if expected > chunk_end:
                    yield lengths, b"".join(values)
                    lengths, values, chunk_end = array.array("i"), [], chunk_end + LABEL_CHUNK
            if lengths:
                yield lengths, b"".join(values)
        except lmdb.Error as exc:
            raise ReaderError(f"the LMDB is damaged ({_reason(exc, '')}); rebuild it") from None
        finally:
            txn.abort()

    def close(self):
        for env in self.envs:
            env.close()
        self.envs = []


def send(stream, kind, payload=b""):
    stream.write(_HEADER.pack(kind, len(payload)))
    stream.write(payload)


def receive(stream):
    """(kind, payload), or (None, b"") at the end of the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None, b""
    kind, size = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None, b""
    return kind, payload


def _serve(reader, inp, out):
    while True:
        kind, payload = receive(inp)
        if kind is None or kind == QUIT:
            return
        try:
            if kind == SCAN:
                raw, entries, chunks = reader.labels(int(payload))
                send(out, OK, struct.pack("<qQ", -1 if raw is None else len(raw), entries) + (raw or b""))
                for lengths, blob in chunks:
                    send(out, LABELS, struct.pack("<I", len(lengths)) + lengths.tobytes() + blob)
                send(out, OK)
            elif kind == GET:
                number, key = struct.unpack_from("<I", payload)[0], payload[4:]
                value = reader.get(number, key)
                send(out, MISSING if value is None else VALUE, value or b"")
        except ReaderError as exc:
            send(out, ERROR, struct.pack("<I", 0) + str(exc).encode("utf-8", "replace"))
        out.flush()


def main(argv):
    # Ctrl-C and a terminal's hang-up are the parent's to handle; this child ends when its
    # input closes. Dying here must not leave a core file behind.
    for name in ("SIGINT", "SIGHUP", "SIGQUIT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    paths, subdirs = argv[0::2], [flag == "1" for flag in argv[1::2]]
    try:
        reader = Reader(paths, subdirs)
    except ReaderError as exc:
        send(out, ERROR, struct.pack("<I", exc.number or 0) + str(exc).encode("utf-8", "replace"))
        out.flush()
        return 0
    send(out, OK)
    out.flush()
    try:
        _serve(reader, inp, out)
    except BrokenPipeError:
        pass
    finally:
        reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
