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


# Bytes of data.mdb per sample, measured with the pool below: a PNG under ~2 KB lies inline in a
# leaf page (leaves filled in key order split half and half), a larger one in whole 4 KB pages.
_SMALL_COST, _BIG_COST = 3155, 6100


def build(path, samples, target_bytes=None, pool=None, log=print):
    """Write ``samples`` records at ``path`` (a new folder), mixing the pool's small and large
    PNGs so that data.mdb comes out near ``target_bytes``. Returns the size of data.mdb."""
    pool = pool or rendered_pool()
    small = [p for p in pool if len(p[0]) <= 2000] or pool
    big = [p for p in pool if len(p[0]) > 2000] or pool
    share = 0.5 if not target_bytes else min(1.0, max(0.0, (target_bytes / samples - _SMALL_COST) /
                                                          (_BIG_COST - _SMALL_COST)))
    started = time.monotonic()
    env = lmdb.open(str(path), map_size=1 << 40, sync=False, metasync=False)
    txn = env.begin(write=True)
    try:
        for index in range(1, samples + 1):
            # a large image whenever the share of large ones so far falls behind
            taken = big if int(index * share) > int((index - 1) * share) else small
            data, word = taken[index % len(taken)]
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
