"""Where the shares of one run meet.

A single process computes every unit itself, as it is asked for. Under msrun every rank computes
its own contiguous share of the units; the others send their records to rank 0 through the
scheduler's relay as they go, and rank 0 yields all the records in the order one process would.
"""
import hashlib
import itertools
import math
import json
import logging
import os
import socket
import tempfile
import threading
import time

from .._signals import interrupt_deferred, was_stopped
from ..errors import CnnctcError
from . import wire
from .launch import share
from .relay import LOST_WORDS

_FLUSH_AT = 1 << 20   # bytes of records per frame
_calls = itertools.count(1)   # the meetings of this process, in order: the n-th joins the scheduler's n-th relay
log = logging.getLogger(__name__)


class RankFailed(CnnctcError):
    """Another rank failed or went. ``told``: already logged the moment rank 0 heard of it (a rank
    that died: msrun kills every worker within a second, so the line cannot wait), not to be shown again."""
    told = False


def _one_line(exc):
    if isinstance(exc, KeyboardInterrupt) or was_stopped():   # e.g. an import cut short by SIGTERM
        return "interrupted"
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if isinstance(exc, CnnctcError) else f"{type(exc).__name__}: {text}"
    return text[:2000]


class Meeting:
    """One run's meeting: ``with Meeting(launch) as meeting:`` then :meth:`gather`.

    ``launch``: :func:`cnnctc.ranks.msrun_launch`'s answer (None: one process does everything).
    ``call``: which relay of the scheduler's to join (default: this process's count of meetings;
    ranks run as threads of one process give it). Entering joins the relay, as early as possible: from then on a rank that fails or dies is
    reported at once, also while the others still load their model. ``writes`` is True in the
    one process that writes the outputs (rank 0, or the only one); it calls :meth:`finish` when
    they are in place.
    """

    def __init__(self, launch, *, call=None):
        self.launch = launch
        self.rank = launch.rank if launch else 0
        self.world = launch.world if launch else 1
        # Which of the scheduler's relays to join: the n-th meeting of a process joins its n-th.
        self.call = call if call is not None else next(_calls) if self.world > 1 else 0
        self._sock = None
        self._told = False
        self._spools, self._ended, self._failure = {}, set(), None
        self._changed = threading.Condition()
        self._listener = None

    @property
    def writes(self):
        return self.rank == 0

    def __enter__(self):
        if self.world > 1:
            try:
                self._join()
            except BaseException:
                self._close()   # a refused or failed join leaves no connection behind
                raise
        return self

    def __exit__(self, kind, exc, tb):
        try:
            if exc is not None and self.rank != 0 and self._sock is not None:
                self._report(exc)
        finally:
            self._close()
        return False

    # Joining ------------------------------------------------------------------------------------

    def _join(self):
        launch = self.launch
        where = f"{launch.host}:{launch.port}"
        deadline = time.monotonic() + launch.join_timeout
        while True:
            kind, payload = self._hello(where, deadline)
            if kind != wire.WAIT:
                break
            time.sleep(0.2)   # the relay still serves an earlier call of this script: join the next one
        if kind == wire.REFUSED:
            raise CnnctcError(f"the run was refused: {payload.decode('utf-8', 'replace')}")
        if kind != wire.HELLO:
            raise CnnctcError(f"something at {where} is not msrun's scheduler of this run; give msrun another "
                              "--master_port")
        if self.rank == 0:
            self._listener = threading.Thread(target=self._listen, name="cnnctc-ranks", daemon=True)
            self._listener.start()
        else:
            self._outbox = []
            self._outbox_size = 0

    def _hello(self, where, deadline):
        """Connect and introduce this rank: the relay's answer (kind, payload)."""
        launch = self.launch
        try:
            self._sock = wire.connect(launch.host, launch.port, deadline, time.monotonic)
        except wire.Closed as exc:
            within = "" if math.isinf(launch.join_timeout) else f" within {launch.timeout_words()}"
            raise CnnctcError(f"rank {self.rank} cannot reach msrun's scheduler at {where} ({exc}){within}; is "
                              "msrun's --master_addr reachable from this host?") from None
        try:
            wire.send(self._sock, wire.HELLO, self.rank, json.dumps({"world": self.world, "call": self.call,
                                                                      "pid": os.getpid(),
                                                                      "host": socket.gethostname()}))
            self._sock.settimeout(60)   # something that is not our relay may never answer
            kind, _, payload = wire.receive(self._sock)
            self._sock.settimeout(None)
        except (wire.Closed, OSError):
            raise CnnctcError(f"something at {where} does not answer as msrun's scheduler of this run does (another "
                              "program or job on that --master_port?); give msrun another --master_port") from None
        if kind == wire.WAIT:
            self._sock.close()
            self._sock = None
        return kind, payload

    def _close(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            # shutdown first: it sends the end of the stream and wakes the listener's recv, which
            # would otherwise keep the socket open after close()
            for end in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
                try:
                    end()
                except OSError:
                    pass
        if self._listener is not None:
            self._listener.join(10)
        for spool in self._spools.values():
            spool.close()
        self._spools = {}

    # Rank 0 ------------------------------------------------------------------------------------------

    def _spool(self, rank):
        if rank not in self._spools:
            self._spools[rank] = tempfile.TemporaryFile()
        return self._spools[rank]

    def _listen(self):
        try:
            self._receive_all(self._sock)
        except Exception as exc:   # e.g. no space left for the spools: the run cannot finish
            with self._changed:
                if self._failure is None:
                    self._failure = (f"cannot keep the other ranks' readings ({exc}); free space in the "
                                     "temporary folder (TMPDIR)")
                self._changed.notify_all()

    def _receive_all(self, sock):
        while True:
            try:
                kind, rank, payload = wire.receive(sock)
            except (wire.Closed, AttributeError, ValueError):
                with self._changed:
                    if len(self._ended) < self.world - 1 and self._failure is None and self._sock is not None:
                        self._failure = ("lost the connection to msrun's scheduler process before every rank had "
                                         "sent its readings (it ended or was killed)")
                        self._announce()
                    self._changed.notify_all()
                return
            with self._changed:
                if kind == wire.DATA:
                    self._spool(rank).write(payload)
                elif kind == wire.END:
                    self._ended.add(rank)
                elif kind == wire.FAIL and self._failure is None:
                    # the failing rank waits until this one ends the run: raised at the next check
                    self._failure = f"rank {rank} failed: {payload.decode('utf-8', 'replace')}"
                elif kind == wire.LOST and self._failure is None:
                    self._failure = f"rank {rank} {payload.decode('utf-8', 'replace') or LOST_WORDS}"
                    self._announce()
                self._changed.notify_all()

    def _announce(self):
        """Say it now: msrun kills every worker within a second of one ending, often before this
        rank's main thread (busy in a graph compile) gets to raise it."""
        log.error("error: %s; nothing was written", self._failure)
        self._told = True

    def check(self):
        """On rank 0: raise at once when another rank has failed or gone (one line naming it)."""
        if self._failure is not None:
            error = RankFailed(f"{self._failure}; nothing was written")
            error.told = self._told
            raise error

    def _wait_for_all(self):
        with self._changed:
            while len(self._ended) < self.world - 1 and self._failure is None:
                self._changed.wait(1.0)
        self.check()

    def _replay(self):
        for rank in range(self.world):
            spool = self._spools.get(rank)
            if spool is None:
                continue
            spool.seek(0)
            for line in spool:
                yield json.loads(line)

    # The other ranks -------------------------------------------------------------------------------------

    def _send(self, record):
        line = json.dumps(record, allow_nan=False).encode() + b"\n"   # ASCII: a file name need not be UTF-8
        self._outbox.append(line)
        self._outbox_size += len(line)
        if self._outbox_size >= _FLUSH_AT:
            self._flush()

    def _flush(self):
        if self._outbox:
            payload, self._outbox, self._outbox_size = b"".join(self._outbox), [], 0
            self._frame(wire.DATA, payload)

    def _frame(self, kind, payload=b""):
        try:
            with interrupt_deferred():   # a frame cut in half by Ctrl-C would garble the stream for the relay
                wire.send(self._sock, kind, self.rank, payload)
        except wire.Closed:
            self._sock = None
            raise CnnctcError(f"rank {self.rank}: msrun's scheduler closed the connection: rank 0 ended the run "
                              "(its log says why)") from None

    def _report(self, exc):
        """Tell rank 0 why this rank stops, and wait (a while) until it has ended the run, so that
        msrun, which kills every worker once one exits with an error, does not kill rank 0 first."""
        try:
            with interrupt_deferred():
                wire.send(self._sock, wire.FAIL, self.rank, _one_line(exc))
            self._sock.settimeout(60)
            while self._sock.recv(1 << 16):
                pass
        except (wire.Closed, OSError):
            pass

    # The work --------------------------------------------------------------------------------------------

    def _agree(self, task):
        """Show the relay what this rank is about to do; the other ranks wait until it matches rank 0's."""
        key = hashlib.sha256(json.dumps(task, sort_keys=True, default=str).encode()).hexdigest()
        self._frame(wire.TASK, key)
        if self.rank == 0:
            return
        try:
            self._sock.settimeout(None if math.isinf(self.launch.join_timeout) else self.launch.join_timeout)
            kind, _, payload = wire.receive(self._sock)
            self._sock.settimeout(None)
        except (wire.Closed, OSError):
            self._sock = None
            raise CnnctcError(f"rank {self.rank}: msrun's scheduler closed the connection before rank 0 showed its "
                              "task: the run ended (scheduler.log and rank 0's log say why)") from None
        if kind == wire.REFUSED:
            raise CnnctcError(payload.decode("utf-8", "replace"))

    def gather(self, units, work, task):
        """The records of ``work(unit)`` for every unit, in order (an iterator), where this process
        writes the outputs; None on the other ranks, after they sent their share's records.
        ``task``: a JSON-able description of the work (inputs and settings as this rank sees them):
        every rank must have rank 0's, or the run ends."""
        units = list(units)
        if self.world == 1:
            return (record for unit in units for record in work(unit))
        self._agree(task)
        start, stop = share(len(units), self.rank, self.world)
        if self.rank != 0:
            for unit in units[start:stop]:
                for record in work(unit):
                    self._send(record)
            self._flush()
            self._frame(wire.END)
            return None
        spool = self._spool(0)
        for unit in units[start:stop]:
            self.check()
            lines = [json.dumps(record, allow_nan=False).encode() + b"\n" for record in work(unit)]
            with self._changed:
                spool.writelines(lines)
        self._wait_for_all()
        return self._replay()

    def finish(self):
        """On rank 0, once the outputs are in place: the run is over (the relay lets the others go)."""
        if self.rank == 0 and self._sock is not None:
            try:
                wire.send(self._sock, wire.DONE, 0)
            except wire.Closed:
                pass
