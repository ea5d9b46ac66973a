"""The training input pipeline: batches of one epoch made in ``--workers`` processes, in a fixed order.

:func:`epoch_order` is the data order of a run: a permutation seeded by (seed, epoch), so a
resumed run continues at the same place; step k of the epoch gives rank r of ``world`` the rows
[(k * world + r) * batch_size ...] of it. :class:`BatchLoader` makes those batches (LMDB read,
decode, the official transform, label encoding) in worker processes and yields them in that
order, exactly as a single process would, a corrupt image replaced by the next readable sample.

The workers map the LMDBs themselves, so a damaged page kills a worker, not the run: the loader
reports it in one line naming the file and the record (a worker killed otherwise is reported
too), and the run's checkpoints stay as they were. Imports no MindSpore.
"""
import logging
import mmap
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile

import numpy as np

from .data import _lmdb_reader as wire
from .data.dataset import crash_reason, decode_record, encode_label
from .errors import CnnctcError, shown
from .transforms import ImageError

__all__ = ["epoch_order", "BatchLoader", "WorkerDied", "default_workers", "MAX_WORKERS"]

log = logging.getLogger(__name__)
MAX_WORKERS = 64
_IN_FLIGHT = 2          # batches queued per worker
_WORKER_CODE = "import sys; from cnnctc.batches import _worker_main; sys.exit(_worker_main())"
_ROW = struct.Struct("<q")  # the row a worker is reading, in its shared page (for the report of its death)


def epoch_order(count, *, seed, epoch, start_step, steps_per_epoch, batch_size, rank, world):
    """(steps left, batch_size) sample indices of rank ``rank``'s batches of one epoch from ``start_step`` on."""
    if not 0 <= start_step < steps_per_epoch:
        raise ValueError(f"start_step {start_step} is outside the epoch's {steps_per_epoch} steps")
    order = np.random.default_rng(seed + epoch).permutation(count)
    usable = order[:steps_per_epoch * world * batch_size].reshape(steps_per_epoch, world, batch_size)
    return usable[start_step:, rank, :]


def default_workers(world=1):
    """The cores this process may use, shared among the ``world`` ranks of one machine; 1 to MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores // max(1, world)))


class WorkerDied(CnnctcError):
    """A data-loading worker ended: which one, how, and what it was reading (the trainer adds how to go on)."""


class _Worker:
    def __init__(self, number, spec):
        self.number = number
        self._page_file = tempfile.TemporaryFile()
        self._page_file.truncate(mmap.PAGESIZE)
        self.page = mmap.mmap(self._page_file.fileno(), mmap.PAGESIZE)
        _ROW.pack_into(self.page, 0, -1)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(self._page_file.fileno())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     pass_fds=(self._page_file.fileno(),))
        self.pending = []        # rows of the tasks sent, oldest first
        self.send(spec)

    def send(self, message):
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        wire.send(self.proc.stdin, wire.GET, data)
        self.proc.stdin.flush()

    def receive(self):
        kind, payload = wire.receive(self.proc.stdout)
        return kind, payload

    def reading(self):
        """The row of its current batch the worker was reading, or None."""
        row = _ROW.unpack_from(self.page, 0)[0]
        return None if row < 0 else row

    def close(self, kill=False):
        proc = self.proc
        try:
            if not kill:
                wire.send(proc.stdin, wire.QUIT)
            proc.stdin.close()
        except OSError:
            pass
        if kill and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        self.page.close()
        self._page_file.close()


class BatchLoader:
    """Batches (images (B, 3, H, W) float32, targets (B, max_length) int32, lengths (B,) int32) of an
    :class:`~cnnctc.data.LmdbDataset`, made by ``workers`` processes (started at the first batch).

    ``corrupt`` counts the images found unreadable (each replaced by the next readable sample).
    """

    def __init__(self, dataset, workers=None):
        if workers is None:
            workers = default_workers()
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise CnnctcError(f"--workers must be an integer from 1 to {MAX_WORKERS}, got {shown(workers)}")
        self.dataset = dataset
        self.workers = workers
        self.corrupt = 0
        self._pool = []

    def _spec(self):
        d = self.dataset
        return {"paths": [str(p) for p in d.paths], "subdirs": [p.is_dir() for p in d.paths], "config": d.config,
                "alphabet": d.filter.alphabet, "max_length": d.filter.max_length}

    def _start(self):
        if not self._pool:
            spec = self._spec()
            try:
                self._pool = [_Worker(n, spec) for n in range(self.workers)]
            except OSError as exc:
                self.close()
                raise CnnctcError(f"cannot start the data-loading workers ({exc.strerror or exc}); try fewer "
                                  "--workers") from None

    def batches(self, order):
        """Yield the batches of ``order`` ((steps, batch) sample indices), in that order."""
        order = np.asarray(order)
        if not len(order):
            return
        self._start()
        try:
            sent = 0
            for step in range(len(order)):
                while sent < len(order) and sent < step + _IN_FLIGHT * len(self._pool):
                    self._send(sent, order[sent])
                    sent += 1
                yield self._result(step, order[step])
        except GeneratorExit:
            self.close()  # the caller stopped early: the queued batches are of no use
            raise
        except BaseException:
            self.close()
            raise

    def _send(self, step, indices):
        worker = self._pool[step % len(self._pool)]
        rows = [self.dataset.row(int(i)) for i in indices]
        worker.pending.append(rows)
        try:
            worker.send(rows)
        except OSError:  # it has ended: what it said before, and how it ended, are read with its results
            pass

    def _result(self, step, indices):
        worker = self._pool[step % len(self._pool)]
        kind, payload = worker.receive()
        if kind is None:
            self._died(worker)
        if kind == wire.ERROR:
            self.close()
            text = payload[1:].decode("utf-8", "replace")
            if payload[:1] == b"C":  # a damaged LMDB that lmdb itself noticed
                raise CnnctcError(text)
            raise RuntimeError(f"a data-loading worker failed: {text}")
        worker.pending.pop(0)
        images, targets, lengths, failures = pickle.loads(payload)
        for row, message in failures:
            self._replace(images, targets, lengths, row, int(indices[row]), message)
        return images, targets, lengths

    def _replace(self, images, targets, lengths, row, index, message):
        """Fill ``row`` with the next readable sample after ``index`` (what a corrupt image becomes)."""
        self.corrupt += 1
        log.warning("skipping a corrupt training image (%s)", message)
        count = len(self.dataset)
        for offset in range(1, count):
            try:
                images[row], targets[row], lengths[row] = self.dataset[(index + offset) % count]
                return
            except ImageError as exc:
                self.corrupt += 1
                log.warning("skipping a corrupt training image (%s)", exc)
        raise CnnctcError("no readable image in the training data")

    def _died(self, worker):
        returncode = worker.proc.wait()
        row = worker.reading()
        rows = worker.pending[0] if worker.pending else None
        where = ""
        if rows is not None and row is not None and row < len(rows):
            number, key, _ = rows[row]
            path = self.dataset.paths[number]
            where = f"{path} image-{key:09d}"
        kind, how = crash_reason(returncode)
        which = f"data-loading worker {worker.number + 1} of {len(self._pool)} (pid {worker.proc.pid})"
        self.close()
        if kind == "crash" and where:
            path, record = where.rsplit(" ", 1)
            raise CnnctcError(f"{path}: the LMDB is damaged (reading {record} crashes a data-loading worker with "
                              f"{how}); rebuild it")
        if where:
            doing = f"while reading {where}"
        elif rows:   # between two records, or before the first: the batch it had been given
            number, key, _ = rows[0]
            doing = (f"with a batch of {len(rows)} records to make (the first: {self.dataset.paths[number]} "
                     f"image-{key:09d})")
        else:
            doing = "while waiting for its next batch"
        raise WorkerDied(f"{which} ended ({how}) {doing}; if it ran out of memory, use fewer --workers")

    def close(self):
        """Stop the workers (the next batches start them again)."""
        pool, self._pool = self._pool, []
        for worker in pool:
            worker.close(kill=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _make_batch(reader, spec, classes, rows, page):
    config, max_length, blank = spec["config"], spec["max_length"], len(spec["alphabet"])
    images = np.empty((len(rows), 3, config.height, config.max_width), np.float32)
    targets = np.empty((len(rows), max_length), np.int32)
    lengths = np.empty(len(rows), np.int32)
    failures = []
    for row, (number, key, label) in enumerate(rows):
        _ROW.pack_into(page, 0, row)
        targets[row], lengths[row] = encode_label(label, classes, max_length, blank)
        path = spec["paths"][number]
        try:
            data = reader.get(number, b"image-%09d" % key)
            if data is None:
                raise ImageError(f"{path}: image-{key:09d} is missing")
            images[row] = decode_record(data, config, path, key)
        except ImageError as exc:
            images[row] = 0
            failures.append((row, str(exc)))
        except wire.ReaderError as exc:
            raise CnnctcError(f"{path}: {exc}") from None
    _ROW.pack_into(page, 0, -1)
    return images, targets, lengths, failures


def _worker_main():
    """A data-loading worker: reads its spec, then makes the batches it is sent until its input ends."""
    for name in ("SIGINT", "SIGHUP", "SIGQUIT"):  # Ctrl-C and a hang-up are the trainer's to handle;
        if hasattr(signal, name):                  # a worker ends when its input closes
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash on a damaged page leaves no core file
    except (ImportError, ValueError, OSError):
        pass
    page_fd = int(sys.argv[1])
    page = mmap.mmap(page_fd, mmap.PAGESIZE)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    kind, payload = wire.receive(inp)
    if kind is None or kind == wire.QUIT:
        return 0
    spec = pickle.loads(payload)
    classes = {c: i for i, c in enumerate(spec["alphabet"])}
    reader = None
    try:
        reader = wire.Reader(spec["paths"], spec["subdirs"])
        while True:
            kind, payload = wire.receive(inp)
            if kind is None or kind == wire.QUIT:
                return 0
            result = _make_batch(reader, spec, classes, pickle.loads(payload), page)
            wire.send(out, wire.VALUE, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
            out.flush()
    except BrokenPipeError:
        return 0
    except Exception as exc:  # reported by the parent, which stops the run
        text = f"C{exc}" if isinstance(exc, CnnctcError) else f"B{type(exc).__name__}: {exc}"
        try:
            wire.send(out, wire.ERROR, text.encode("utf-8", "replace"))
            out.flush()
        except OSError:
            pass
        return 1
    finally:
        if reader is not None:
            reader.close()
