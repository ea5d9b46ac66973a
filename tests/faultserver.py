"""A small threaded HTTP file server for the download tests, able to misbehave on request.

Each request takes the next step of ``server.plan`` (then ``"ok"`` forever):
- "ok": serve normally, honouring Range with If-Range;
- "drop:N": send the headers, N bytes of the body, then close the connection;
- "ignore-range": answer 200 with the whole body even when a range was asked;
- "status:CODE": answer CODE with an empty body;
- "stall:S": send the headers, then sleep S seconds before the body;
Every request is logged as [step, Range header, status, bytes sent] before anything is sent
(and its request line's target in ``server.paths``)
(bytes are counted as they are handed to the socket), so the log is complete when a client
has its answer.
"""
import hashlib
import http.server
import threading
import time


class FaultServer:
    def __init__(self, content=b"", *, etag="v1", throttle=0.0, chunk=64 * 1024):
        self.content = content
        self.etag = etag
        self.plan = []
        self.log = []
        self.paths = []
        self.throttle = throttle  # seconds of sleep per chunk, to make downloads slow
        self.chunk = chunk
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        # serve_forever looks for shutdown every 10 ms, not every 0.5 s: many tests stop a server each.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/cnnctc.ckpt"

    @property
    def sha256(self):
        return hashlib.sha256(self.content).hexdigest()

    def next_step(self):
        with self._lock:
            return self.plan.pop(0) if self.plan else "ok"

    def record(self, step, range_header, status):
        entry = [step, range_header, status, 0]
        with self._lock:
            self.log.append(entry)
        return entry

    def body_bytes_served(self):
        return sum(entry[3] for entry in self.log)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _Handler(http.server.BaseHTTPRequestHandler):
    owner = None
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        owner = self.owner
        step = owner.next_step()
        owner.paths.append(self.path)
        content = owner.content
        range_header = self.headers.get("Range")
        if step.startswith("status:"):
            code = int(step.split(":")[1])
            owner.record(step, range_header, code)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if_range = self.headers.get("If-Range")
        if (range_header and step != "ignore-range" and (if_range is None or if_range == f'"{owner.etag}"')):
            start = int(range_header.split("=")[1].split("-")[0])
        if start >= len(content) and start:
            owner.record(step, range_header, 416)
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = content[start:]
        status = 206 if start else 200
        entry = owner.record(step, range_header, status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{owner.etag}"')
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        self.end_headers()
        limit = len(body)
        if step.startswith("drop:"):
            limit = min(limit, int(step.split(":")[1]))
        if step.startswith("stall:"):
            time.sleep(float(step.split(":")[1]))
        sent = 0
        try:
            while sent < limit:
                piece = body[sent:min(limit, sent + owner.chunk)]
                sent += len(piece)
                entry[3] = sent
                self.wfile.write(piece)
                if owner.throttle:
                    time.sleep(owner.throttle)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if limit < len(body):
            self.close_connection = True
