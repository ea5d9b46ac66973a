"""A large LMDB in the field's layout for the benchmarks: a few hundred rendered PNGs repeated.

Written as DTRB's create_lmdb_dataset.py writes (``image-%09d`` then ``label-%09d`` per sample,
one transaction per 1000 samples, ``num-samples`` last), so the pages lie as in the field's
files: the labels in leaf pages scattered between the images' overflow pages.
"""
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lmdb  # noqa: E402
import numpy as np  # noqa: E402

from cnnctc.render import find_fonts, random_words, render_word  # noqa: E402

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def rendered_pool(count=400, seed=0):
    """(PNG bytes, word) pairs: half clean renders (~1 KB), half slanted and blurred (~5 KB)."""
    import random
    rng = random.Random(seed)
    fonts = find_fonts() or [None]
    words = random_words(count, ALPHABET, max_length=12, rng=rng)
    pool = []
    for i, word in enumerate(words):
        buffer = io.BytesIO()
        render_word(word, font=fonts[i % len(fonts)], noise=bool(i % 2), rng=rng).save(buffer, format="PNG")
        pool.append((buffer.getvalue(), word))
    return pool


def build(path, samples, target_bytes=None, pool=None, log=print):
    """Write ``samples`` records at ``path`` (a new folder); the images are picked from the pool so
    that the file comes out near ``target_bytes``. Returns the size of data.mdb."""
    pool = pool or rendered_pool()
    small = sorted(pool, key=lambda p: len(p[0]))
    # LMDB keeps a value over ~2 KB in whole 4 KB overflow pages, a smaller one inline: aim the
    # running size of the file (estimated that way) at the target.
    def cost(data):
        return 4096 * -(-(len(data) + 16) // 4096) + 40 if len(data) > 2000 else len(data) + 60
    costs = [cost(d) for d, _ in small]
    per_sample = (target_bytes / samples) if target_bytes else None
    started = time.monotonic()
    env = lmdb.open(str(path), map_size=1 << 40, sync=False, metasync=False)
    total, txn = 0, env.begin(write=True)
    try:
        for index in range(1, samples + 1):
            if per_sample is None:
                choice = index % len(small)
            else:  # bisect for the image that keeps the running mean on target
                want = per_sample * index - total
                choice = int(np.clip(np.searchsorted(costs, want), 0, len(small) - 1))
                choice = (choice + index % 7) % len(small) if abs(costs[choice] - want) < 200 else choice
            data, word = small[choice]
            total += costs[choice] + 40
            txn.put(b"image-%09d" % index, data)
            txn.put(b"label-%09d" % index, word.encode())
            if index % 1000 == 0:
                txn.commit()
                txn = env.begin(write=True)
                if index % 200_000 == 0:
                    log(f"  wrote {index:,} samples ({time.monotonic() - started:.0f} s)")
        txn.put(b"num-samples", str(samples).encode())
        txn.commit()
    except BaseException:
        txn.abort()
        raise
    env.sync(True)
    env.close()
    return os.path.getsize(os.path.join(path, "data.mdb"))


def drop_page_cache():
    """Empty the page cache (root only): every run then reads the file from the disk."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
