"""The frames ranks and msrun's scheduler exchange over TCP: kind, rank, length, then the payload."""
import socket
import struct

HEADER = struct.Struct("!BII")   # kind, rank, payload length
MAX_PAYLOAD = 64 << 20           # a larger frame is not one of ours

HELLO, DATA, END, FAIL, LOST, DONE, REFUSED, TASK, WAIT = range(1, 10)


class Closed(Exception):
    """The other side closed the connection (or it broke)."""


def send(sock, kind, rank, payload=b""):
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    try:
        sock.sendall(HEADER.pack(kind, rank, len(payload)) + payload)
    except OSError as exc:
        raise Closed(str(exc)) from None


def _exactly(sock, size):
    chunks, left = [], size
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 20))
        except OSError as exc:
            raise Closed(str(exc)) from None
        if not chunk:
            raise Closed("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock):
    """(kind, rank, payload bytes) of the next frame; Closed at the end of the stream."""
    kind, rank, size = HEADER.unpack(_exactly(sock, HEADER.size))
    if size > MAX_PAYLOAD or kind not in range(1, 10):
        raise Closed("not a cnnctc frame")
    return kind, rank, _exactly(sock, size)


class Reader:
    """Frames parsed from bytes as they arrive on a non-blocking socket (the scheduler's side)."""

    def __init__(self):
        self.buffer = bytearray()

    def feed(self, data):
        self.buffer += data
        frames = []
        while len(self.buffer) >= HEADER.size:
            kind, rank, size = HEADER.unpack_from(self.buffer)
            if size > MAX_PAYLOAD or kind not in range(1, 10):
                raise Closed("not a cnnctc frame")
            if len(self.buffer) < HEADER.size + size:
                break
            frames.append((kind, rank, bytes(self.buffer[HEADER.size:HEADER.size + size])))
            del self.buffer[:HEADER.size + size]
        return frames


def connect(host, port, deadline, clock):
    """A connection to ``host:port``, retried until ``deadline`` (the scheduler may start after us)."""
    import time
    last = None
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=10)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            last = exc
        if clock() >= deadline:
            raise Closed(f"{exc_text(last)}")
        time.sleep(0.2)


def exc_text(exc):
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
