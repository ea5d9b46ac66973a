"""The contract, round three: one Recognizer shared by threads, and used in forked children.

Each case runs in a fresh Python process (a crash there, SIGSEGV included, fails the test instead of
ending the run) with real threads and real ``multiprocessing`` fork children, every wait bounded.
"""
import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image, ImageDraw

from conftest import subprocess_env
from cnnctc.runtime import cpu_only

WORDS = ("cat", "road", "7up", "hello", "zebra", "42", "mind", "spore", "text", "ocr", "lamp", "q9")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Word images drawn here (no dependency on the renderer): distinct texts, distinct readings."""
    root = tmp_path_factory.mktemp("words")
    paths = []
    for i, word in enumerate(WORDS):
        image = Image.new("RGB", (100, 32), "white")
        ImageDraw.Draw(image).text((6 + i % 3, 8), word * (1 + i % 2), fill=(i * 9 % 80,) * 3)
        path = root / f"{i:02d}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def run_script(body, images, timeout=300):
    """Run ``body`` in a fresh Python with IMAGES bound; returns its last stdout line as JSON."""
    script = "import json, sys\nIMAGES = json.loads(sys.argv[1])\n" + textwrap.dedent(body)
    run = subprocess.run([sys.executable, "-c", script, json.dumps(images)], env=subprocess_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-3000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


THREADS = """
    import threading
    from cnnctc.recognizer import Recognizer
    reader = Recognizer(model="cnnctc/mini-synth", runtime=RUNTIME, batch_size=4)
    alone = {i: [p.text for p in reader.recognize(IMAGES[i:] + IMAGES[:i])] for i in range(3)}
    # A second reader whose first calls (graph compiles) happen in the threads themselves.
    fresh = Recognizer(model="cnnctc/mini-synth", runtime=RUNTIME, batch_size=3)
    got, errors = {}, []
    def work(i):
        try:
            for call in range(5):
                images = IMAGES[i:] + IMAGES[:i]
                got[(i, call)] = [p.text for p in (fresh if call == 0 else reader).recognize(images)]
        except BaseException as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    print(json.dumps({"hung": any(t.is_alive() for t in threads), "errors": errors,
                      "wrong": [list(k) for k, v in got.items() if v != alone[k[0]]], "calls": len(got),
                      "distinct": len({tuple(v) for v in alone.values()})}))
"""


@pytest.mark.parametrize("runtime", ["mindspore", "onnxruntime"])
def test_three_threads_share_one_recognizer_and_each_gets_its_own_texts(images, runtime):
    result = run_script(f"RUNTIME = {runtime!r}\n" + textwrap.dedent(THREADS), images)
    assert result == {"hung": False, "errors": [], "wrong": [], "calls": 15, "distinct": 3}


FORK = """
    import multiprocessing, queue
    from cnnctc.recognizer import Recognizer
    reader = Recognizer(model="cnnctc/mini-synth", runtime=RUNTIME, batch_size=4)
    expected = [p.text for p in reader.recognize(IMAGES)]

    def child(results, fresh):
        try:
            used = Recognizer(model="cnnctc/mini-synth", runtime=RUNTIME, batch_size=4) if fresh else reader
            results.put(("texts", [p.text for p in used.recognize(IMAGES)]))
        except Exception as exc:
            results.put((type(exc).__name__, str(exc)))

    context = multiprocessing.get_context("fork")
    outcome = {}
    for fresh in (False, True):
        results = context.Queue()
        process = context.Process(target=child, args=(results, fresh))
        process.start()
        try:
            kind, value = results.get(timeout=60)
            outcome[str(fresh)] = [kind, value == expected if kind == "texts" else value]
        except queue.Empty:
            outcome[str(fresh)] = ["hung", None]
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join(30)
    outcome["parent still reads"] = [p.text for p in reader.recognize(IMAGES)] == expected
    print(json.dumps(outcome))
"""


def test_a_mindspore_recognizer_in_a_fork_child_is_refused_at_once_in_one_line(images):
    outcome = run_script("RUNTIME = 'mindspore'\n" + textwrap.dedent(FORK), images)
    assert outcome["parent still reads"] is True
    for fresh in ("False", "True"):   # the parent's reader, and one created in the child: both would hang
        kind, message = outcome[fresh]
        assert kind == "CnnctcError", outcome
        assert "\n" not in message and "fork" in message
        assert "multiprocessing.get_context('spawn')" in message and "create the Recognizer in each" in message


def test_an_onnxruntime_recognizer_works_in_a_fork_child(images):
    outcome = run_script("RUNTIME = 'onnxruntime'\n" + textwrap.dedent(FORK), images)
    assert outcome == {"False": ["texts", True], "True": ["texts", True], "parent still reads": True}


SPAWN = """
    import multiprocessing
    from cnnctc.recognizer import Recognizer

    def read(images):
        return [p.text for p in Recognizer(model="cnnctc/mini-synth", runtime="mindspore").recognize(images)]

    if __name__ == "__main__":
        expected = read(IMAGES)   # MindSpore ran here; spawned children start clean
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            print(json.dumps(pool.apply_async(read, (IMAGES,)).get(timeout=240) == expected))
"""


def test_the_advice_works_a_spawned_child_reads_with_mindspore(images, tmp_path):
    script = tmp_path / "spawned.py"   # spawn re-imports the main module: it must be a file
    script.write_text("import json, sys\nIMAGES = json.loads(sys.argv[1])\n" + textwrap.dedent(SPAWN))
    run = subprocess.run([sys.executable, str(script), json.dumps(images)], env=subprocess_env(),
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "true"


STATE = """
    import os, tempfile
    import numpy as np
    import mindspore as ms
    import cnnctc
    from cnnctc.loader import create_network
    from cnnctc.recognizer import Recognizer
    from cnnctc.registry import get_model
    checkpoint = str(get_model("cnnctc/mini-synth").bundled)
    ms.set_context(mode=ms.PYNATIVE_MODE)   # the caller's choice

    def left_alone(call):
        os.environ["CNNCTC_CACHE_DIR"] = tempfile.mkdtemp()   # no export cached: this call exports
        np.random.seed(7)
        expected = np.random.RandomState(7).random_sample(3).tolist()
        call()
        return {"pynative": ms.get_context("mode") == ms.PYNATIVE_MODE,
                "numpy": np.random.random_sample(3).tolist() == expected}

    print(json.dumps({
        "onnxruntime": left_alone(lambda: Recognizer(checkpoint, runtime="onnxruntime")),
        "auto": left_alone(lambda: Recognizer(checkpoint, runtime="auto")),
        "create_network": left_alone(create_network),
        # load documents that it sets GRAPH_MODE; NumPy's random numbers are the caller's
        "load": left_alone(lambda: cnnctc.load(checkpoint))["numpy"],
    }))
"""


@pytest.mark.skipif(not cpu_only(), reason="a GPU or Ascend device is here: auto runs MindSpore, in graph mode")
def test_the_first_export_leaves_mindspore_mode_and_numpy_random_state_as_the_caller_set_them(images):
    left = run_script(STATE, images)
    both = {"pynative": True, "numpy": True}
    assert left == {"onnxruntime": both, "auto": both, "create_network": both, "load": True}
