"""msrun's scheduler process, for predict and eval: the place the ranks' readings meet.

Every rank connects to msrun's ``--master_addr:--master_port`` (the address MindSpore's own
cluster uses, free here because reading never forms that cluster). The relay checks that all
ranks run the same task, forwards the other ranks' frames to rank 0 as they come, tells rank 0
at once when a rank fails or its connection drops, and ends when rank 0 closes its connection.
Nothing is written to disk here.
"""
import itertools
import json
import logging
import selectors
import socket
import time

from . import wire

log = logging.getLogger(__name__)
LOST_WORDS = ("stopped before it sent all its readings: its process ended without a word (killed, or out of "
              "memory); see its log in msrun's --log_dir")


class _Peer:
    def __init__(self, sock):
        self.sock, self.reader = sock, wire.Reader()
        self.rank = None
        self.ended = self.failed = False
        self.where = ""   # " (pid N on HOST)" from its hello
        self.key = None   # the digest of its task


class Relay:
    """One run's relay: ``run()`` returns 0 when rank 0 finished its outputs, 1 otherwise."""

    def __init__(self, port, world, *, join_timeout, host="", call=1):
        self.world, self.join_timeout, self.call = world, join_timeout, call
        self.listener = socket.create_server((host, port), backlog=max(16, world * 2))
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.peers, self.ranks = {}, {}
        self.key = None   # rank 0's task
        self.outbox = bytearray()   # frames for rank 0, in the order they came
        self.rank0_done = False
        self.outcome = None
        self.failed = False

    def _fail(self, line):
        """Say why the run ends, once, in the scheduler's log: msrun shows that log's lines with
        "Error" when a worker fails (rank 0, which says it too, may be killed by msrun first)."""
        if not self.failed:
            self.failed = True
            log.error("Error: %s; the run ended, nothing was written", line)
        if self.ranks.get(0) is None:   # rank 0 never joined (or went): nobody to tell, the run is over
            self.outcome = 1

    def close(self):
        for peer in list(self.peers.values()):
            self._drop(peer)
        self.selector.close()
        self.listener.close()

    def run(self):
        started = time.monotonic()
        try:
            while self.outcome is None:
                for key, events in self.selector.select(timeout=1.0):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj.fileno() in self.peers:
                        peer = self.peers[key.fileobj.fileno()]
                        if events & selectors.EVENT_READ:
                            self._read(peer)
                        if events & selectors.EVENT_WRITE and peer.sock.fileno() in self.peers:
                            self._flush()
                if len(self.ranks) < self.world and time.monotonic() - started > self.join_timeout:
                    self._join_timed_out()
                self._want_write()
            return self.outcome
        finally:
            self.close()

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        self.peers[sock.fileno()] = _Peer(sock)
        self.selector.register(sock, selectors.EVENT_READ)

    def _read(self, peer):
        try:
            data = peer.sock.recv(1 << 20)
            frames = peer.reader.feed(data) if data else None
        except (OSError, wire.Closed):
            frames = None
        if frames is None:
            self._closed(peer)
            return
        for kind, rank, payload in frames:
            if peer.rank is None:
                if kind != wire.HELLO or not self._hello(peer, rank, payload):
                    return
            elif kind == wire.TASK:
                self._task(peer, payload.decode("ascii", "replace"))
            elif peer.rank == 0:
                if kind == wire.DONE:
                    self.rank0_done = True
            elif kind in (wire.DATA, wire.END, wire.FAIL):
                peer.ended |= kind == wire.END
                peer.failed |= kind == wire.FAIL
                if kind == wire.FAIL:
                    self._fail(f"rank {peer.rank}{peer.where} failed: {payload.decode('utf-8', 'replace')}")
                self.outbox += wire.HEADER.pack(kind, peer.rank, len(payload)) + payload

    def _hello(self, peer, rank, payload):
        try:
            hello = json.loads(payload)
            world, call = hello["world"], hello.get("call", 1)
        except (ValueError, KeyError, TypeError, AttributeError):
            self._drop(peer)   # not one of ours
            return False
        if isinstance(call, int) and call > self.call:   # a later evaluate() of the script: after this one
            self._turn_away(peer, rank, wire.WAIT)
            return False
        problem = None
        if world != self.world or call != self.call:
            problem = (f"msrun's --master_port already serves a run of {self.world} ranks: another msrun job uses "
                       "that port; give this one another --master_port")
        elif not 0 <= rank < self.world or rank in self.ranks:
            problem = (f"msrun's --master_port already serves a run whose rank {rank} has joined: another msrun "
                       "job uses that port (give this one another --master_port), or on several hosts msrun was "
                       "started without --node_rank (give each host its own)")
        if problem:   # the newcomer is refused; the run already here goes on
            self._turn_away(peer, rank, wire.REFUSED, problem)
            return False
        peer.rank = rank
        self.ranks[rank] = peer
        if isinstance(hello.get("pid"), int) and isinstance(hello.get("host"), str):
            peer.where = f" (pid {hello['pid']} on {hello['host'][:64]})"
        return self._reply(peer, wire.HELLO)

    def _turn_away(self, peer, rank, kind, text=""):
        """Answer a connection that is not one of this run's ranks, and close it."""
        try:
            peer.sock.setblocking(True)
            peer.sock.settimeout(5)
            wire.send(peer.sock, kind, rank if 0 <= rank < 1 << 32 else 0, text)
        except (wire.Closed, OSError):
            pass
        self._drop(peer)

    def _reply(self, peer, kind, text=""):
        try:
            peer.sock.setblocking(True)
            wire.send(peer.sock, kind, peer.rank, text)
            peer.sock.setblocking(False)
        except wire.Closed:
            self._closed(peer)
            return False
        return True

    def _task(self, peer, key):
        """A rank's description of its work: the others must match rank 0's before they read."""
        peer.key = key
        if peer.rank == 0:
            self.key = key
            for waiting in [p for p in self.ranks.values() if p is not None and p.rank != 0 and p.key]:
                self._answer(waiting)
        elif self.key is not None:
            self._answer(peer)

    def _answer(self, peer):
        if peer.key == self.key:
            self._reply(peer, wire.HELLO)
        else:
            self._reply(peer, wire.REFUSED, "started with other inputs or settings than rank 0 (every rank must "
                        "read the same files, seen the same way, with the same options and model)")

    def _closed(self, peer):
        rank = peer.rank
        self._drop(peer)
        if rank == 0:
            self.outcome = 0 if self.rank0_done else 1
            if not self.rank0_done:
                self._fail(f"rank 0{peer.where} ended before its outputs were written (killed, or its log says "
                           "why)")
        elif rank is not None and not (peer.ended or peer.failed):
            self.outbox += wire.HEADER.pack(wire.LOST, rank, 0)
            self._fail(f"rank {rank}{peer.where} {LOST_WORDS}")

    def _drop(self, peer):
        self.peers.pop(peer.sock.fileno(), None)
        try:
            self.selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()
        if peer.rank is not None and self.ranks.get(peer.rank) is peer:
            del self.ranks[peer.rank]
            self.ranks[peer.rank] = None   # joined once, now gone

    def _join_timed_out(self):
        missing = [r for r in range(self.world) if r not in self.ranks]
        if 0 in missing:
            self._fail(f"rank 0 did not join within {self.join_timeout:g} s (msrun's --cluster_time_out; raise it "
                       "if loading the model takes longer)")
            self.outcome = 1
            return
        for rank in missing:
            self.ranks[rank] = None
            line = f"did not join within {self.join_timeout:g} s (msrun's --cluster_time_out)"
            self.outbox += wire.HEADER.pack(wire.LOST, rank, len(line.encode())) + line.encode()
            self._fail(f"rank {rank} {line}")

    def _rank0(self):
        return self.ranks.get(0)

    def _want_write(self):
        peer = self._rank0()
        if peer is None:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
        try:
            self.selector.modify(peer.sock, events)
        except (KeyError, ValueError):
            pass

    def _flush(self):
        peer = self._rank0()
        if peer is None or not self.outbox:
            return
        try:
            sent = peer.sock.send(self.outbox)
        except BlockingIOError:
            return
        except OSError:
            self._closed(peer)
            return
        del self.outbox[:sent]


_served = itertools.count(1)   # the relays this process ran: the n-th serves the ranks' n-th call


def serve(launch):
    """Run msrun's scheduler process as the ranks' relay until rank 0 is done; the exit status.
    With one worker there is nothing to relay: that worker does everything."""
    if launch.world == 1:
        return 0
    call = next(_served)
    bind = launch.host if launch.host in ("127.0.0.1", "localhost", "::1") else ""
    try:
        relay = Relay(launch.port, launch.world, join_timeout=launch.join_timeout, host=bind, call=call)
    except OSError as exc:   # msrun prints the scheduler's lines with "Error" when the job fails
        log.error("Error: msrun's scheduler cannot listen on port %d (%s): another job uses it; give msrun another "
                  "--master_port", launch.port, exc.strerror or exc)
        return 1
    return relay.run()
