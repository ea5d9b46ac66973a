"""Download-and-verify throughput from a local HTTP server, against sha256sum of the same file,
and peak memory of verifying a large file.

Writes a file of --size MB (random bytes) to a temporary folder, serves it on 127.0.0.1 from
this process, and runs each measured step in a fresh subprocess (so that its peak RSS is its
own): `cnnctc.download.fetch` (download, hash while streaming, atomic rename), `sha256sum`,
and `cnnctc.download.sha256_file` (verify a cached file without its stamp).

    python benchmarks/bench_download.py [--size 700]
"""
import argparse
import functools
import hashlib
import http.server
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FETCH = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from cnnctc.download import fetch
start = time.perf_counter()
fetch(sys.argv[2], sys.argv[3], allow_http=True, quiet=True)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

VERIFY = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from cnnctc.download import sha256_file
start = time.perf_counter()
sha256_file(sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BASELINE = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import cnnctc.download, requests
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def run_json(code, *args):
    out = subprocess.run([sys.executable, "-c", code, ROOT, *map(str, args)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=700, help="file size in MB (default 700)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cnnctc-bench-")
    try:
        served = os.path.join(work, "serve")
        os.mkdir(served)
        asset = os.path.join(served, "asset.ckpt")
        digest = hashlib.sha256()
        with open(asset, "wb") as f:
            for _ in range(args.size):
                block = os.urandom(1 << 20)
                digest.update(block)
                f.write(block)
        handler = functools.partial(_QuietHandler, directory=served)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        sys.path.insert(0, ROOT)
        from cnnctc.registry import get_model
        manifest = get_model().manifest.to_dict()
        manifest.update(url=f"http://127.0.0.1:{server.server_address[1]}/asset.ckpt", sha256=digest.hexdigest(),
                        file_name="asset.ckpt")
        manifest_path = os.path.join(work, "manifest.json")
        json.dump(manifest, open(manifest_path, "w"))

        fetched = run_json(FETCH, manifest_path, os.path.join(work, "cache"))
        server.shutdown()
        start = time.perf_counter()
        subprocess.run(["sha256sum", asset], check=True, capture_output=True)
        sha256sum_seconds = time.perf_counter() - start
        verified = run_json(VERIFY, asset)
        baseline = run_json(BASELINE)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
          f"file {args.size} MB")
    print()
    print("| step | seconds | MB/s | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| `fetch` from 127.0.0.1 (download + SHA-256 + rename) | {fetched['seconds']:.2f} | "
          f"{args.size / fetched['seconds']:.0f} | {fetched['peak_mb']:.0f} |")
    print(f"| `sha256sum` of the same file | {sha256sum_seconds:.2f} | {args.size / sha256sum_seconds:.0f} | - |")
    print(f"| `sha256_file` (verify a cached file) | {verified['seconds']:.2f} | "
          f"{args.size / verified['seconds']:.0f} | {verified['peak_mb']:.0f} |")
    print(f"| (Python with cnnctc.download and requests imported) | - | - | {baseline['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
