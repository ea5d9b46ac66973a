"""LMDB datasets and make-lmdb under damage, races, kills, signals, full disks and huge files.

Real LMDBs damaged on disk, real child processes (killed with -9, stopped, signalled), two
writers at once, a small tmpfs for a full disk, sparse files for huge inputs. Every CLI case
checks the exit status, one error line, no traceback, and the files.
"""
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from conftest import as_foreground_job, subprocess_env
from cnnctc.batches import BatchLoader, epoch_order
from cnnctc.data import LabelFilter, LmdbDataset, make_lmdb, write_lmdb
from cnnctc.data.writer import MAX_IMAGE_FILE_BYTES
from cnnctc.errors import CnnctcError
from cnnctc.render import render_word
from test_contract_inputs import cli, dataset_folder, error_line, hash_tree, png_bytes

DIGITS = "0123456789"
QUICK = 60


def words_lmdb(path, count=300, size=6000, seed=0):
    """An LMDB of ``count`` samples whose images are ``size`` random bytes (one overflow page or two each)."""
    rng = np.random.default_rng(seed)
    write_lmdb(path, [(rng.bytes(size), str(100 + n)) for n in range(count)])
    return Path(path)


def pages(data_mdb):
    """[(page number, flags)] of every page of a data.mdb, read with plain file reads."""
    raw = Path(data_mdb).read_bytes()
    psize = 4096
    return [(n, struct.unpack_from("<H", raw, n * psize + 10)[0]) for n in range(len(raw) // psize)], raw


P_BRANCH, P_LEAF, P_OVERFLOW = 0x01, 0x02, 0x04


def overwrite_page(data_mdb, number, seed=1):
    rng = np.random.default_rng(seed)
    with open(data_mdb, "r+b") as f:
        f.seek(number * 4096)
        f.write(rng.bytes(4096))


def leaf_holding(data_mdb, prefix):
    """The number of a leaf page whose keys start with ``prefix`` (in the middle of the file)."""
    found, raw = pages(data_mdb)
    leaves = [n for n, flags in found if flags & P_LEAF and not flags & P_OVERFLOW and n > 1
              and prefix in raw[n * 4096:(n + 1) * 4096]]
    assert leaves, f"no leaf page holds {prefix!r}"
    return leaves[len(leaves) // 2]


def read_all(dataset):
    """Read every record; (records read, first CnnctcError or None). Unreadable images count as read."""
    for index in range(len(dataset)):
        try:
            dataset.record(index)
        except CnnctcError as exc:
            if "the LMDB is damaged" in str(exc) or "ended" in str(exc):
                return index, exc
    return len(dataset), None


# Reading damaged LMDBs ---------------------------------------------------------------------------

def test_a_garbage_page_among_the_labels_is_reported_at_opening(tmp_path):
    data = words_lmdb(tmp_path / "data.lmdb")
    overwrite_page(data / "data.mdb", leaf_holding(data / "data.mdb", b"label-"))
    with pytest.raises(CnnctcError) as caught:
        LmdbDataset(data, LabelFilter(DIGITS))
    message = str(caught.value)
    assert message.startswith(f"{data}: ") and "damaged" in message and "\n" not in message


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_garbage_page_among_the_images_is_reported_at_the_record_and_the_process_lives(tmp_path, seed):
    data = words_lmdb(tmp_path / "data.lmdb")
    overwrite_page(data / "data.mdb", leaf_holding(data / "data.mdb", b"image-"), seed=seed)
    dataset = LmdbDataset(data, LabelFilter(DIGITS))  # the labels are whole: opening works
    assert len(dataset) == 300
    read, error = read_all(dataset)
    assert error is not None and 0 < read < 300
    assert str(error).startswith(f"{data}: the LMDB is damaged (") and str(error).endswith("rebuild it")
    with pytest.raises(CnnctcError):  # it stays reported, and this process is alive to say so
        dataset.record(read)
    dataset.close()


def test_a_truncated_file_is_refused_at_opening_by_the_page_bound(tmp_path):
    data = words_lmdb(tmp_path / "data.lmdb")
    size = (data / "data.mdb").stat().st_size
    with open(data / "data.mdb", "r+b") as f:
        f.truncate(size // 2 // 4096 * 4096)
    with pytest.raises(CnnctcError, match=rf"^{tmp_path}/data.lmdb: the LMDB is damaged \(data.mdb is [\d,]+ bytes, "
                                          r"needs [\d,]+\); rebuild it$"):
        LmdbDataset(data, LabelFilter(DIGITS))


def test_opening_reads_the_labels_not_the_images(tmp_path):
    """Every image page garbage: opening still works (the images are not read), each image is
    a corrupt record when read."""
    data = words_lmdb(tmp_path / "data.lmdb", count=50)
    found, _ = pages(data / "data.mdb")
    overflow = [n for n, flags in found if flags & P_OVERFLOW]
    assert len(overflow) >= 50
    raw = bytearray((data / "data.mdb").read_bytes())
    for n in overflow:  # keep each page's header, so that the page is still an overflow page
        raw[n * 4096 + 16:(n + 1) * 4096] = b"\xa5" * 4080
    (data / "data.mdb").write_bytes(bytes(raw))
    with LmdbDataset(data, LabelFilter(DIGITS)) as dataset:
        assert [label for _, _, label in dataset.samples] == [str(100 + n) for n in range(50)]
        assert dataset.record(7)[0][:4080] == b"\xa5" * 4080


def test_many_datasets_open_in_one_process_and_each_ends_its_reader(tmp_path):
    data = words_lmdb(tmp_path / "data.lmdb", count=5)
    opened = [LmdbDataset(data, LabelFilter(DIGITS)) for _ in range(3)]  # the same LMDB three times
    pids = [d._reader._proc.pid for d in opened]
    for dataset in opened:
        assert dataset.record(4)[1] == "104"
        dataset.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: no zombie, no orphan


def test_a_killed_reader_is_one_line_not_a_hang(tmp_path):
    data = words_lmdb(tmp_path / "data.lmdb", count=5)
    dataset = LmdbDataset(data, LabelFilter(DIGITS))
    os.kill(dataset._reader._proc.pid, signal.SIGKILL)
    with pytest.raises(CnnctcError, match=rf"^{tmp_path}/data.lmdb: the process reading the LMDB ended \(SIGKILL\) "
                                          r"while reading image-000000002; run again$"):
        dataset.record(1)
    dataset.close()


# The training loader ------------------------------------------------------------------------------

def noise_png(seed=0):
    """A readable PNG over 4 KB: LMDB keeps it in overflow pages, outside the leaf."""
    rng = np.random.default_rng(seed)
    return png_bytes(Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)))


def rendered_lmdb(path, count=60, noise=()):
    """Rendered words; the samples numbered in ``noise`` (1-based) get a noise_png image instead."""
    words = [str(1000 + 37 * n) for n in range(count)]
    write_lmdb(path, [(noise_png(n) if n + 1 in noise else png_bytes(render_word(w)), w)
                      for n, w in enumerate(words)])
    return Path(path)


def test_the_workers_give_the_batches_of_one_process_in_its_order(tmp_path):
    data = rendered_lmdb(tmp_path / "data.lmdb")
    dataset = LmdbDataset(data, LabelFilter(DIGITS))
    order = epoch_order(len(dataset), seed=3, epoch=1, start_step=1, steps_per_epoch=7, batch_size=4, rank=1,
                        world=2)
    assert order.shape == (6, 4)
    expected = [(np.stack([dataset[int(i)][0] for i in row]), np.stack([dataset[int(i)][1] for i in row]),
                 np.array([dataset[int(i)][2] for i in row])) for row in order]
    for workers in (1, 3):
        with BatchLoader(dataset, workers=workers) as loader:
            got = list(loader.batches(order))
        assert len(got) == len(expected)
        for (images, targets, lengths), (want_images, want_targets, want_lengths) in zip(got, expected):
            np.testing.assert_array_equal(images, want_images)
            np.testing.assert_array_equal(targets, want_targets)
            np.testing.assert_array_equal(lengths, want_lengths)
    # Resuming at step 3 gives the rest of the same epoch.
    later = epoch_order(len(dataset), seed=3, epoch=1, start_step=3, steps_per_epoch=7, batch_size=4, rank=1, world=2)
    np.testing.assert_array_equal(later, order[2:])
    dataset.close()


def test_a_worker_killed_mid_epoch_is_one_line_not_a_hang(tmp_path):
    data = rendered_lmdb(tmp_path / "data.lmdb")
    dataset = LmdbDataset(data, LabelFilter(DIGITS))
    order = epoch_order(len(dataset), seed=1, epoch=0, start_step=0, steps_per_epoch=10, batch_size=4, rank=0,
                        world=1)
    loader = BatchLoader(dataset, workers=2)
    batches = loader.batches(order)
    next(batches)
    victim = loader._pool[1].proc
    os.kill(victim.pid, signal.SIGKILL)
    # Which worker and what it was reading (or had been given); how to go on is the trainer's to say.
    with pytest.raises(CnnctcError, match=rf"^data-loading worker 2 of 2 \(pid {victim.pid}\) ended \(SIGKILL\) "
                                          r"(while reading \S+ image-\d{9}|with a batch of 4 records to make \(the "
                                          r"first: \S+ image-\d{9}\)|while waiting for its next batch); if it ran "
                                          r"out of memory, use fewer --workers$"):
        next(batches)
    assert victim.poll() is not None and loader._pool == []  # the others are stopped too
    dataset.close()


def oversize_record(path, key):
    """Make the leaf entry of ``image-<key>`` (a value in overflow pages) say the value is 1 MiB
    long: past the end of the file, so that reading it kills the reader with SIGBUS. (LMDB
    itself notices an oversized value inside a leaf.)"""
    raw = bytearray((path / "data.mdb").read_bytes())
    name = b"image-%09d" % key
    for start in range(2 * 4096, len(raw), 4096):  # the live entry, through each leaf's node pointers
        flags, lower = struct.unpack_from("<HH", raw, start + 10)
        if not flags & P_LEAF or flags & P_OVERFLOW:
            continue
        for slot in range((lower - 16) // 2):
            node = start + struct.unpack_from("<H", raw, start + 16 + 2 * slot)[0]
            if raw[node + 8:node + 8 + len(name)] == name and struct.unpack_from("<HH", raw, node + 4) == (1, len(name)):
                struct.pack_into("<HH", raw, node, 0, 16)
                (path / "data.mdb").write_bytes(bytes(raw))
                return
    raise AssertionError(f"no leaf entry of {name} in overflow pages")


def damaged_record_lmdb(path):
    """Two readable samples whose second image's size says 1 MiB, past the end of the file (a SIGBUS to read)."""
    write_lmdb(path, [(noise_png(0), "123"), (noise_png(1), "456")])
    oversize_record(path, 2)
    return path


def test_a_damaged_record_kills_a_worker_and_is_reported_naming_it(tmp_path):
    data = damaged_record_lmdb(tmp_path / "data.lmdb")
    dataset = LmdbDataset(data, LabelFilter(DIGITS))
    with BatchLoader(dataset, workers=1) as loader:
        with pytest.raises(CnnctcError) as caught:
            list(loader.batches([[0], [1]]))
    assert str(caught.value) == (f"{data}: the LMDB is damaged (reading image-000000002 crashes a data-loading "
                                 "worker with SIGBUS); rebuild it")
    dataset.close()


# make-lmdb: two at once, kills, signals ----------------------------------------------------------

# A make_lmdb in a child that stops at its first image until a line arrives on stdin.
BLOCKED = r"""
import sys
import cnnctc.data.writer as writer
from cnnctc.data import make_lmdb
real = writer.read_bounded_image
def blocked(path):
    if not getattr(blocked, "done", False):
        blocked.done = True
        print("reading", flush=True)
        sys.stdin.readline()
    return real(path)
writer.read_bounded_image = blocked
if sys.argv[4] == "cli":
    from cnnctc.cli import main
    sys.exit(main(["make-lmdb", *sys.argv[1:4]]))
print(make_lmdb(*sys.argv[1:4]))
"""


def start_blocked(images, labels, out, how="api", preexec_fn=as_foreground_job):
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED, str(images), str(labels), str(out), how],
                            env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    assert proc.stdout.readline() == "reading\n"  # it holds its work folder now
    return proc


def work_folders(folder, out_name):
    return sorted(n for n in os.listdir(folder) if n.startswith(f".{out_name}.") and n.endswith(".tmp"))


@pytest.fixture
def images(tmp_path):
    folder = dataset_folder(tmp_path / "images")
    return folder, folder / "labels.tsv"


def test_a_second_make_lmdb_to_the_same_out_is_refused_while_the_first_runs(tmp_path, images):
    out = tmp_path / "data.lmdb"
    first = start_blocked(*images, out)
    assert len(work_folders(tmp_path, "data.lmdb")) == 1
    second = cli("make-lmdb", *images, out)
    assert second.returncode == 1
    assert "is being written by another make-lmdb" in error_line(second) and str(out) in error_line(second)
    assert not os.path.lexists(out)
    stdout, stderr = first.communicate("go\n", timeout=QUICK)
    assert first.returncode == 0, stderr
    assert "3 samples written" in stdout
    with LmdbDataset(out, LabelFilter(DIGITS)) as dataset:
        assert [label for _, _, label in dataset.samples] == ["123", "4567", "89"]
    assert work_folders(tmp_path, "data.lmdb") == []


def test_two_make_lmdb_at_once_one_wins_and_the_other_says_why(tmp_path, images):
    out = tmp_path / "data.lmdb"
    procs = [subprocess.Popen([sys.executable, "-m", "cnnctc", "make-lmdb", *map(str, images), str(out)],
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=QUICK), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    [(_, _, stderr)] = [r for r in results if r[0] == 1]
    [line] = [line for line in stderr.splitlines() if line.startswith("cnnctc: error:")]
    assert any(why in line for why in ("is being written by another make-lmdb", "already exists",
                                       "appeared while the LMDB was written")), line
    with LmdbDataset(out, LabelFilter(DIGITS)) as dataset:
        assert [label for _, _, label in dataset.samples] == ["123", "4567", "89"]
    assert work_folders(tmp_path, "data.lmdb") == []


def test_a_folder_made_at_out_meanwhile_is_kept(tmp_path, images):
    out = tmp_path / "data.lmdb"
    first = start_blocked(*images, out)
    out.mkdir()
    (out / "mine.txt").write_text("keep me\n")
    stdout, stderr = first.communicate("go\n", timeout=QUICK)
    assert first.returncode == 1
    assert "already exists" in stderr.strip().splitlines()[-1]
    assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me\n"
    assert work_folders(tmp_path, "data.lmdb") == []


def test_kill_9_leaves_a_work_folder_that_the_next_run_removes(tmp_path, images):
    out = tmp_path / "data.lmdb"
    first = start_blocked(*images, out)
    [left] = work_folders(tmp_path, "data.lmdb")
    first.kill()
    first.wait()
    assert work_folders(tmp_path, "data.lmdb") == [left]  # what kill -9 leaves
    other = tmp_path / ".other.lmdb.abcdefgh.tmp"  # another OUT's work folder is not ours to remove
    other.mkdir()
    run = cli("make-lmdb", *images, out)
    assert run.returncode == 0, run.stderr
    assert work_folders(tmp_path, "data.lmdb") == [] and other.is_dir()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM])
def test_hangup_and_quit_stop_make_lmdb_like_terminate(tmp_path, images, signum):
    out = tmp_path / "data.lmdb"
    proc = start_blocked(*images, out, how="cli")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=QUICK)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "cnnctc: interrupted" and "Traceback" not in stderr
    assert not os.path.lexists(out) and work_folders(tmp_path, "data.lmdb") == []


def test_a_hangup_that_nohup_ignores_stays_ignored(tmp_path, images):
    def like_nohup():
        as_foreground_job()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    out = tmp_path / "data.lmdb"
    proc = start_blocked(*images, out, how="cli", preexec_fn=like_nohup)
    proc.send_signal(signal.SIGHUP)
    stdout, stderr = proc.communicate("go\n", timeout=QUICK)
    assert proc.returncode == 0, stderr
    assert "3 samples written" in stdout
    with LmdbDataset(out, LabelFilter(DIGITS)) as dataset:
        assert [label for _, _, label in dataset.samples] == ["123", "4567", "89"]


# make-lmdb: what it makes, and what it refuses -----------------------------------------------------

def test_modes_follow_the_umask(tmp_path, images):
    previous = os.umask(0o022)
    try:
        make_lmdb(*images, tmp_path / "data.lmdb")
    finally:
        os.umask(previous)
    out = tmp_path / "data.lmdb"
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    assert {name: oct((out / name).stat().st_mode & 0o777) for name in os.listdir(out)} == {
        "data.mdb": "0o644", "lock.mdb": "0o644"}
    previous = os.umask(0o077)
    try:
        make_lmdb(*images, tmp_path / "private.lmdb")
    finally:
        os.umask(previous)
    assert oct((tmp_path / "private.lmdb").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "private.lmdb" / "data.mdb").stat().st_mode & 0o777) == "0o600"


def test_overwrite_keeps_a_file_form_lmdb_a_file(tmp_path, images):
    out = tmp_path / "words.mdb"
    env = lmdb.open(str(out), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", b"0")
    env.close()
    (tmp_path / "words.mdb-lock").unlink()
    run = cli("make-lmdb", *images, out, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert out.is_file()
    with LmdbDataset(out, LabelFilter(DIGITS)) as dataset:
        assert [label for _, _, label in dataset.samples] == ["123", "4567", "89"]
    assert sorted(os.listdir(tmp_path)) == ["images", "words.mdb"]


def test_overwrite_never_replaces_an_lmdb_inside_images_dir(tmp_path, images):
    folder, labels = images
    inner = folder / "inner.lmdb"
    write_lmdb(inner, [(png_bytes(render_word("7")), "7")])
    before = hash_tree(tmp_path)
    run = cli("make-lmdb", folder, labels, inner, "--overwrite")
    assert run.returncode == 1
    assert error_line(run) == (f"cnnctc: error: {inner} lies inside the input {folder}; refusing to replace it, "
                               "choose an OUT outside it")
    assert hash_tree(tmp_path) == before


@pytest.mark.parametrize("content", ["one-word\n", "a.png b\nno tabs here\n", "\n\n"])
def test_a_labels_file_with_no_usable_line_is_an_error_and_writes_nothing(tmp_path, images, content):
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    before = hash_tree(tmp_path)
    run = cli("make-lmdb", images[0], labels, tmp_path / "data.lmdb")
    assert run.returncode == 1
    assert ("no usable line; each line must be 'relative/path<TAB>text' (optionally <TAB>lexicon words separated "
            "by spaces)") in error_line(run)
    assert hash_tree(tmp_path) == before


def test_zero_readable_images_is_an_error_and_writes_nothing(tmp_path, images):
    labels = tmp_path / "labels.txt"
    labels.write_text("missing.png\t12\nnotes.txt\t34\n")
    before = hash_tree(tmp_path)
    run = cli("make-lmdb", images[0], labels, tmp_path / "data.lmdb")
    assert run.returncode == 1
    assert "none of its samples could be written (0 samples written; skipped 2 unreadable images" in error_line(run)
    assert hash_tree(tmp_path) == before


def test_a_nul_in_a_path_argument_is_named(tmp_path, images):
    with pytest.raises(CnnctcError, match=r"^out 'x\\x00' holds a NUL character; not a valid file name$"):
        make_lmdb(*images, "x\0")
    with pytest.raises(CnnctcError, match="^images_dir"):
        make_lmdb("a\0b", images[1], tmp_path / "o.lmdb")
    with pytest.raises(TypeError, match="^out must be a path"):
        write_lmdb(3, [])
    assert sorted(os.listdir(tmp_path)) == ["images"]


def test_a_huge_sparse_image_is_one_unreadable_input_never_read(tmp_path, images):
    folder, labels = images
    huge = folder / "huge.png"
    with open(huge, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(100 << 30)  # 100 GB, sparse: nothing on the disk
    with open(labels, "a") as f:
        f.write("huge.png\t5\n")
    started = time.monotonic()
    run = cli("make-lmdb", folder, labels, tmp_path / "data.lmdb")
    assert run.returncode == 0, run.stderr
    assert "3 samples written; skipped 1 unreadable images" in run.stdout
    assert (f"skipping {huge}: the file is 107,374,182,400 bytes, more than the {MAX_IMAGE_FILE_BYTES:,} an image "
            "may be; not read") in run.stderr
    assert time.monotonic() - started < QUICK / 2


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a 1 MB tmpfs needs root")
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if run.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_names_the_file_and_says_the_disk_is_full(tmp_path, small_disk):
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    noise.save(folder / "noise.png")  # ~360 KB that do not compress
    (folder / "labels.tsv").write_text("".join("noise.png\t1\n" for _ in range(8)))
    out = small_disk / "data.lmdb"
    run = cli("make-lmdb", folder, folder / "labels.tsv", out)
    assert run.returncode == 1
    line = error_line(run)
    assert line.startswith(f"cnnctc: error: {out}: the disk is full (writing {small_disk}/.data.lmdb.") and (
        "data.mdb failed" in line and "free some space" in line), line
    assert os.listdir(small_disk) == []  # the partial work is gone, the space is free again


def test_memory_is_bounded_by_the_byte_budget_not_the_sample_count(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (700, 1000, 3), dtype=np.uint8)).save(folder / "0.png")
    size = (folder / "0.png").stat().st_size
    assert size > 2_000_000
    for n in range(1, 100):
        os.link(folder / "0.png", folder / f"{n}.png")  # 100 images of 2 MB, 200 MB in all
    (folder / "labels.tsv").write_text("".join(f"{n}.png\t{n}\n" for n in range(100)))
    code = ("import resource, sys\nfrom cnnctc.data import make_lmdb\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print(make_lmdb(sys.argv[1], sys.argv[2], sys.argv[3]))\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    run = subprocess.run([sys.executable, "-c", code, str(folder), str(folder / "labels.tsv"), str(tmp_path / "o")],
                         env=subprocess_env(), capture_output=True, text=True, timeout=QUICK * 2)
    assert run.returncode == 0, run.stderr
    stats, grown = run.stdout.splitlines()
    assert stats.startswith("100 samples written")
    assert int(grown) < 130, f"peak memory grew by {grown} MB writing 200 MB"  # 2 x the 32 MB budget + one image


def test_finetune_stops_at_the_damaged_record_with_its_checkpoints_intact(tmp_path):
    order = epoch_order(40, seed=1, epoch=0, start_step=0, steps_per_epoch=10, batch_size=4, rank=0, world=1)
    key = int(order[2][0]) + 1  # the first sample of the third step (every sample is kept)
    data = rendered_lmdb(tmp_path / "train.lmdb", count=40, noise=[key])
    oversize_record(data, key)
    out = tmp_path / "run"
    run = cli("finetune", "--train", data, "--out", out, "--pretrained", "none", "--alphabet", DIGITS,
              "--output-channel", 32, "--steps", 6, "--batch-size", 4, "--save-every", 1, "--workers", 1,
              timeout=240)
    assert run.returncode == 1
    assert error_line(run) == (f"cnnctc: error: {data}: the LMDB is damaged (reading image-{key:09d} crashes a "
                               "data-loading worker with SIGBUS); rebuild it")
    from cnnctc.checkpoint import read_checkpoint
    from cnnctc.train import TRAIN_STATE_KEY, step_checkpoints
    saved = step_checkpoints(out)
    assert [p.name for p in saved] == ["cnnctc-0000001.ckpt", "cnnctc-0000002.ckpt"]
    assert '"step": 2' in read_checkpoint(saved[-1])[TRAIN_STATE_KEY]  # whole, and resumable


def test_make_lmdb_shows_progress_on_a_terminal(tmp_path, images):
    import fcntl
    import pty
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "cnnctc", "make-lmdb", *map(str, images), str(tmp_path / "o")],
                            env=subprocess_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal's other end closed: the command is done
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(timeout=QUICK) == 0
    assert b"3/3" in shown and b"100%" in shown  # a bar counted against the labels file's lines
    assert "3 samples written" in proc.stdout.read().decode()
    proc.stdout.close()
