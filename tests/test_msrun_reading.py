"""`eval` and `predict` under msrun give exactly what one process gives.

Real msrun on 127.0.0.1 with two workers (and its scheduler process, which relays the readings),
on onnxruntime and on MindSpore, against the same command run alone: every line of the
predictions file, the table or JSON and predict's output must be the same bytes. Then the ways a
run ends early: a worker killed with SIGKILL, a worker stopped by SIGTERM, each ended by rank 0 in
one line naming the rank, with nothing at the outputs. The relay's own rules (ranks that disagree,
several ranks in one process) are checked on real sockets in this process.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import subprocess_env
from cnnctc.data import write_lmdb
from cnnctc.errors import CnnctcError
from cnnctc.ranks import Launch, Meeting, share
from cnnctc.ranks.relay import Relay
from cnnctc.render import find_fonts, render_word

ROOT = Path(__file__).resolve().parent.parent
MODEL = ["--model", "cnnctc/mini-synth"]
WORDS = ["coffee", "Open", "street", "2024", "exit", "BAKERY", "hotel", "x", "", "pharmacy", "route66", "taxi",
         "no-parking", "internationalization", "bus", "Ticket", "a b", "museum", "7", "parking"]


def png(word, seed):
    import io
    fonts = find_fonts()
    image = render_word(word or " ", font=fonts[seed % len(fonts)] if fonts else None, rng=random.Random(seed))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two LMDBs (labels the zoo protocol skips, an image that does not decode, per-image
    lexicons) and a folder of word images with one file that is not an image."""
    root = tmp_path_factory.mktemp("msrun")
    samples = []
    for i in range(53):
        word = WORDS[i % len(WORDS)]
        image = b"\x89PNG damaged" if i == 31 else png(word, i)
        lexicon = [w for w in (word.lower(), "coffee", "hotel", "zzz") if w] if i % 3 == 0 else None
        samples.append((image, word, lexicon) if lexicon else (image, word))
    write_lmdb(root / "a.lmdb", samples)
    write_lmdb(root / "b.lmdb", [(png(w, 100 + i), w) for i, w in enumerate(WORDS[:11])])
    images = root / "images"
    images.mkdir()
    for i in range(23):
        (images / f"{i:03d}.png").write_bytes(png(WORDS[(i * 7) % len(WORDS)], 200 + i))
    (images / "011b.png").write_bytes(b"not an image at all")
    return root


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cnnctc_script():
    bin_dir = Path(sys.executable).parent
    return shutil.which("cnnctc", path=str(bin_dir)) or str(ROOT / "cnnctc" / "__main__.py")


def msrun_command(port, logs, *args, workers=2):
    bin_dir = Path(sys.executable).parent
    msrun = shutil.which("msrun", path=str(bin_dir)) or shutil.which("msrun")
    if msrun is None:
        pytest.fail("msrun (installed with mindspore) is not on PATH")
    return [msrun, f"--worker_num={workers}", f"--local_worker_num={workers}", "--master_addr=127.0.0.1",
            f"--master_port={port}", f"--log_dir={logs}", "--join=True", "--cluster_time_out=120",
            cnnctc_script(), *map(str, args)]


def env():
    bin_dir = Path(sys.executable).parent
    return subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def alone(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=env(), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def under_msrun(tmp_path, *args, workers=2):
    logs = tmp_path / f"logs-{time.monotonic_ns()}"
    run = subprocess.run(msrun_command(free_port(), logs, *args, workers=workers), env=env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=400)
    run.logs = {p.name: p.read_text(errors="replace") for p in logs.glob("*.log")}
    return run


def test_eval_on_two_workers_gives_one_process_numbers_and_lines(data, tmp_path):
    # --drop-last and --max-length cut the whole dataset, not each share; batch 5 splits neither
    # dataset evenly; dtrb-unfiltered keeps the damaged image (read as black, as DTRB does).
    args = ["eval", *MODEL, "--data", data / "a.lmdb", data / "b.lmdb", "--protocol", "dtrb-unfiltered",
            "--drop-last", 8, "--max-length", 12, "--batch-size", 5, "--json"]
    one = alone(*args, "--predictions", "one.jsonl", "--output", "one.json", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = under_msrun(tmp_path, *args, "--predictions", "two.jsonl", "--output", "two.json")
    assert two.returncode == 0, (two.stderr[-3000:], two.logs)
    report = json.loads((tmp_path / "one.json").read_text())
    assert report["total"]["kept"] == 56 and report["total"]["unreadable"] == 1, report   # 48 + 8
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    # Each rank read: the ranks' logs say which runtime read; rank 1 wrote nothing of its own.
    assert "onnxruntime" in two.logs["worker_0.log"] and "onnxruntime" in two.logs["worker_1.log"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("cache",) and not p.name.startswith("logs")) == [
        "one.json", "one.jsonl", "two.json", "two.jsonl"]


def test_eval_and_predict_on_mindspore_under_msrun_match_one_process(data, tmp_path):
    args = ["eval", *MODEL, "--runtime", "mindspore", "--data", data / "a.lmdb", data / "b.lmdb",
            "--per-image-lexicon", "--batch-size", 7]
    one = alone(*args, "--predictions", "one.jsonl", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = under_msrun(tmp_path, *args, "--predictions", "two.jsonl", "--output", "two.txt")
    assert two.returncode == 0, (two.stderr[-3000:], two.logs)
    assert (tmp_path / "two.txt").read_text() == one.stdout   # the table
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert "zoo" in one.stdout and "MindSpore" in two.logs["worker_1.log"]

    # predict: batch 3 over 24 inputs, one not an image (both runs exit 1 and name it once).
    args = ["predict", data / "images", *MODEL, "--runtime", "mindspore", "--format", "json", "--batch-size", 3]
    one = alone(*args, cwd=tmp_path)
    assert one.returncode == 1 and one.stderr.count("011b.png") == 1, one.stderr
    two = under_msrun(tmp_path, *args, "--output", "predict.jsonl")
    assert two.returncode != 0   # msrun reports the worker's exit 1
    assert (tmp_path / "predict.jsonl").read_text() == one.stdout
    assert len(one.stdout.splitlines()) == 23
    rank0 = two.logs["worker_0.log"]
    assert rank0.count("011b.png: not a readable image") == 1 and "1 of 24 inputs could not be read" in rank0
    assert "011b.png" not in two.logs["worker_1.log"]   # rank 0 alone reports


def test_the_python_api_under_msrun(data, tmp_path):
    script = tmp_path / "evaluate_here.py"
    script.write_text(
        "import json, sys\n"
        "import cnnctc\n"
        "reader = cnnctc.Recognizer(model='cnnctc/mini-synth', batch_size=4)\n"
        f"answer = cnnctc.evaluate(reader, [{str(data / 'a.lmdb')!r}], protocol='dtrb', drop_last=6)\n"
        "if answer is not None:\n"
        "    results, total = answer\n"
        "    (open(sys.argv[1], 'x')).write(json.dumps(total.as_dict()))\n")
    bin_dir = Path(sys.executable).parent
    msrun = shutil.which("msrun", path=str(bin_dir)) or shutil.which("msrun")
    logs = tmp_path / "logs"
    run = subprocess.run([msrun, "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
                          f"--master_port={free_port()}", f"--log_dir={logs}", "--join=True",
                          "--cluster_time_out=120", str(script), str(tmp_path / "total.json")],
                         env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, (run.stderr[-2000:], [p.read_text() for p in logs.glob("*.log")])
    from cnnctc import Recognizer, evaluate
    _, total = evaluate(Recognizer(model="cnnctc/mini-synth", batch_size=4), [data / "a.lmdb"], protocol="dtrb",
                        drop_last=6, ranks=None)
    assert json.loads((tmp_path / "total.json").read_text()) == total.as_dict()


def test_one_msrun_worker_does_everything_and_the_scheduler_nothing(data, tmp_path):
    args = ["eval", *MODEL, "--data", data / "b.lmdb", "--json"]
    one = alone(*args, cwd=tmp_path)
    run = under_msrun(tmp_path, *args, "--output", "one-worker.json", workers=1)
    assert one.returncode == 0 and run.returncode == 0, (one.stderr, run.stderr[-2000:], run.logs)
    assert (tmp_path / "one-worker.json").read_text() == one.stdout
    assert run.logs["scheduler.log"] == ""


# ---------------------------------------------------------------------------------------------
# A rank that ends early

def _socket_inodes(pid):
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _joined(pid, port):
    """Whether process ``pid`` holds a TCP connection to ``port`` on this machine (it joined the relay)."""
    try:
        inodes = _socket_inodes(pid)
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[3] == "01" and fields[9] in inodes:   # 01: ESTABLISHED
            return True
    return False


def _rank_pid(port, rank):
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (f"MS_SCHED_PORT={port}".encode() in environ and f"RANK_ID={rank}".encode() in environ
                and b"MS_ROLE=MS_WORKER" in environ):
            return int(proc.name)
    return None


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """An LMDB whose second half takes rank 1 a few seconds on MindSpore at batch 1."""
    path = tmp_path_factory.mktemp("large") / "large.lmdb"
    images = [png(WORDS[i % len(WORDS)], i) for i in range(40)]
    write_lmdb(path, [(images[i % 40], WORDS[i % len(WORDS)]) for i in range(1600)])
    return path


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill -9", "SIGTERM"])
def test_a_rank_that_ends_early_ends_the_run_in_one_line_and_writes_nothing(large, tmp_path, how):
    port, logs = free_port(), tmp_path / "logs"
    outputs = tmp_path / "out"
    outputs.mkdir()
    run = subprocess.Popen(msrun_command(port, logs, "eval", *MODEL, "--runtime", "mindspore", "--batch-size", 1,
                                         "--data", large, "--predictions", outputs / "p.jsonl", "--output",
                                         outputs / "table.txt"),
                           env=env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        pid = first = None
        while time.monotonic() < deadline and run.poll() is None:   # both ranks joined the relay
            pid, first = pid or _rank_pid(port, 1), first or _rank_pid(port, 0)
            if pid and first and _joined(pid, port) and _joined(first, port):
                break
            time.sleep(0.02)
        assert pid and run.poll() is None, "the ranks never joined"
        os.kill(pid, how)
        console = run.communicate(timeout=120)[0]
        assert run.returncode != 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    expected = f"rank 1 (pid {pid} on {socket.gethostname()}) " + (
        "stopped before it sent all its readings" if how == signal.SIGKILL else "failed: interrupted")
    # msrun shows the scheduler's lines with "Error" when a worker fails: one names the rank.
    said = [line for line in console.splitlines() if line.startswith("cnnctc: Error: ")]
    assert len(said) == 1 and expected in said[0] and said[0].endswith("nothing was written"), console[-3000:]
    scheduler = (logs / "scheduler.log").read_text(errors="replace")
    assert scheduler.strip() == said[0], scheduler
    # Rank 0 says it too when msrun has not killed it first; never more than once, never a traceback.
    rank0 = (logs / "worker_0.log").read_text(errors="replace")
    assert sum("rank 1" in line for line in rank0.splitlines()) <= 1 and "Traceback" not in rank0, rank0
    assert list(outputs.iterdir()) == []   # no output, no temporary file left beside them


# ---------------------------------------------------------------------------------------------
# The relay on real sockets, ranks as threads of this process

def _relay(world, port):
    relay = Relay(port, world, join_timeout=30, host="127.0.0.1")
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("status", relay.run()), daemon=True)
    thread.start()
    return thread, outcome


def _launch(rank, world, port):
    return Launch("worker", rank, world, "127.0.0.1", port, 30.0)


def _rank(rank, world, port, task, units, answers):
    try:
        with Meeting(_launch(rank, world, port), call=1) as meeting:
            records = meeting.gather(units, lambda unit: [{"unit": unit, "by": rank, "x": unit / 3}], task)
            answers[rank] = list(records) if records is not None else None
            meeting.finish()
    except CnnctcError as exc:
        answers[rank] = exc


@pytest.mark.parametrize("world", [2, 3])
def test_the_relay_puts_every_share_in_order_on_rank_0(world):
    port = free_port()
    relay, outcome = _relay(world, port)
    answers, units = {}, list(range(10))
    threads = [threading.Thread(target=_rank, args=(r, world, port, {"t": 1}, units, answers)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    relay.join(60)
    assert [record["unit"] for record in answers[0]] == units
    assert [record["x"] for record in answers[0]] == [u / 3 for u in units]   # floats exactly as computed
    owners = [record["by"] for record in answers[0]]
    assert owners == [r for r in range(world) for _ in range(*share(10, r, world))]
    assert all(answers[r] is None for r in range(1, world)) and outcome["status"] == 0


@pytest.mark.parametrize("first", [0, 1], ids=["rank 0 first", "rank 1 first"])
def test_ranks_started_with_other_inputs_are_refused(first):
    port = free_port()
    relay, outcome = _relay(2, port)
    answers, tasks = {}, {0: {"paths": ["a.lmdb"]}, 1: {"paths": ["b.lmdb"]}}
    early = threading.Thread(target=_rank, args=(first, 2, port, tasks[first], [1, 2], answers))
    early.start()
    time.sleep(0.5)
    _rank(1 - first, 2, port, tasks[1 - first], [1, 2], answers)
    early.join(60)
    relay.join(60)
    assert isinstance(answers[1], CnnctcError) and "other inputs or settings than rank 0" in str(answers[1])
    assert isinstance(answers[0], CnnctcError) and str(answers[0]).startswith(
        f"rank 1 failed: started with other inputs")
    assert outcome["status"] == 1


def test_share_splits_contiguously_and_evenly():
    for count in range(0, 40):
        for world in (1, 2, 3, 7):
            parts = [share(count, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_msrun_scheduler_of_a_single_worker_neither_reads_nor_trains(data, tmp_path, in_process_cli):
    # msrun starts a scheduler process running the same command beside its one worker: before,
    # it trained (and read) a second time, into the same outputs.
    scheduler = {"MS_ROLE": "MS_SCHED", "MS_WORKER_NUM": "1", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "1"}
    run = in_process_cli("finetune", "--train", data / "b.lmdb", "--out", tmp_path / "run", "--pretrained",
                         "cnnctc/mini-synth", "--steps", "1", **scheduler)
    assert run.returncode == 0 and not (tmp_path / "run").exists(), run.stderr
    run = in_process_cli("eval", *MODEL, "--data", data / "b.lmdb", "--output", tmp_path / "t.txt", **scheduler)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "") and not (tmp_path / "t.txt").exists()


def test_a_second_job_on_the_same_port_is_turned_away_and_the_first_goes_on():
    port = free_port()
    relay, outcome = _relay(2, port)
    answers, units = {}, list(range(6))
    first = threading.Thread(target=_rank, args=(0, 2, port, {"t": 1}, units, answers))
    first.start()
    time.sleep(0.3)
    stranger = {}
    _rank(0, 2, port, {"t": 2}, units, stranger)   # another job's rank 0, same port
    assert isinstance(stranger[0], CnnctcError) and "another msrun job uses that port" in str(stranger[0])
    _rank(1, 2, port, {"t": 1}, units, answers)
    first.join(60)
    relay.join(60)
    assert [record["unit"] for record in answers[0]] == units and outcome["status"] == 0


def test_a_script_that_evaluates_twice_meets_the_schedulers_relays_in_turn():
    port = free_port()
    outcomes = []

    def scheduler():   # msrun's scheduler process running the same script: one relay per call
        for call in (1, 2):
            outcomes.append(Relay(port, 2, join_timeout=30, host="127.0.0.1", call=call).run())

    thread = threading.Thread(target=scheduler, daemon=True)
    thread.start()
    answers = {1: {}, 2: {}}

    def worker(rank, delay):
        for call in (1, 2):
            time.sleep(delay)
            with Meeting(_launch(rank, 2, port), call=call) as meeting:
                records = meeting.gather([call, call + 1, call + 2], lambda unit: [{"unit": unit}], {"call": call})
                answers[call][rank] = None if records is None else [r["unit"] for r in records]
                meeting.finish()

    ranks = [threading.Thread(target=worker, args=(0, 0.4)), threading.Thread(target=worker, args=(1, 0))]
    for t in ranks:
        t.start()
    for t in ranks:
        t.join(60)
    thread.join(60)
    # rank 1 comes to the second call while the first still waits for rank 0: it waits its turn
    assert answers == {1: {0: [1, 2, 3], 1: None}, 2: {0: [2, 3, 4], 1: None}} and outcomes == [0, 0]


def test_msrun_settings_out_of_range_are_refused_in_one_line():
    from cnnctc.ranks import msrun_launch
    worker = {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2", "RANK_ID": "1", "MS_SCHED_PORT": "8118"}
    assert msrun_launch(worker).rank == 1
    for changed, words in (({"MS_WORKER_NUM": "5000000"}, "1 to 4096 msrun workers"),
                           ({"MS_SCHED_PORT": "99999"}, "not a TCP port"), ({"RANK_ID": "2"}, "outside msrun's 2")):
        with pytest.raises(CnnctcError, match=words):
            msrun_launch({**worker, **changed})
    # msrun's --cluster_time_out -1 (or 0) means "wait as long as it takes"
    assert msrun_launch({**worker, "MS_TOPO_TIMEOUT": "-1"}).join_timeout == float("inf")


def test_ranks_compare_the_models_bytes_not_only_its_path(tmp_path):
    from cnnctc.recognizer import Recognizer, reader_identity
    from cnnctc.registry import SCENE_MODEL, get_model
    path = tmp_path / "model.ckpt"
    identities = []
    for uid in ("cnnctc/mini-synth", SCENE_MODEL):
        shutil.copyfile(get_model(uid).bundled, path)
        identities.append(reader_identity(Recognizer(path, runtime="mindspore")))
    assert identities[0]["model"] == identities[1]["model"] and identities[0] != identities[1]


def test_predictions_are_not_written_when_the_output_could_not_be(data, tmp_path):
    from cnnctc import Recognizer, evaluate

    def output_fails(results, total):
        raise CnnctcError("the disk is full")
    with pytest.raises(CnnctcError, match="disk is full"):
        evaluate(Recognizer(model="cnnctc/mini-synth"), [data / "b.lmdb"], predictions=tmp_path / "p.jsonl",
                 before_commit=output_fails)
    assert not [p.name for p in tmp_path.iterdir() if "p.jsonl" in p.name]   # no file, no temporary one


@pytest.mark.parametrize("output, words", [("", "not a valid file name"), (".", "is a folder"),
                                           ("images", "is the input"), ("images/000.png", "is the input")])
def test_an_output_that_would_lose_data_or_mean_nothing_is_refused_before_reading(data, tmp_path, in_process_cli,
                                                                                   output, words):
    target = data / output if output else output
    run = in_process_cli("predict", data / "images", *MODEL, "--output", target)
    assert run.returncode == 1 and run.stdout == "" and words in run.stderr and run.stderr.count("\n") == 1, run
