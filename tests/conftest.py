import json
import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_v", "3")

from faultserver import FaultServer  # noqa: E402


# The files that take longest (pytest --durations, summed per file), run first: with --dist loadfile
# each file is one unit of work, and a long file handed out last would keep one worker busy while
# the other waits. The rest keep their order.
LONGEST_FIRST = ("test_finetune.py", "test_contract_training.py", "test_docs.py", "test_batch_invariance.py",
                 "test_lineage.py", "test_msrun_reading.py", "test_synth_scene.py", "test_contract_round3_files.py",
                 "test_readme_demo.py", "test_runtime.py", "test_mini_synth.py", "test_synth.py", "test_hub.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # a stable sort


def isolate(patch, cache):
    """Through ``patch`` (a MonkeyPatch): none of the user's cnnctc settings, and ``cache`` as the cache."""
    for name in ("CNNCTC_MANIFEST", "CNNCTC_ASSET_URL", "CNNCTC_OFFLINE", "CNNCTC_ALLOW_HTTP"):
        patch.delenv(name, raising=False)
    patch.setenv("CNNCTC_CACHE_DIR", str(cache))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads or writes the user's cache, or sees their cnnctc settings."""
    isolate(monkeypatch, tmp_path / "cache")


@pytest.fixture
def serve():
    """Start FaultServers serving given bytes; all are stopped after the test."""
    servers = []

    def start(content, **kwargs):
        server = FaultServer(content, **kwargs).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def write_manifest(path, **changes):
    """The default registry entry's manifest with some fields changed, written to ``path``."""
    from cnnctc.registry import get_model
    data = get_model("mindspore/1.3/cnnctc_mjstiiit").manifest.to_dict()
    data.update(changes)
    Path(path).write_text(json.dumps(data))
    return Path(path)


def subprocess_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_in_process(*args):
    """`cnnctc ARGS` run in this process (``cnnctc.cli.run_captured``), without the MindSpore import of a
    new one: its exit code and what it wrote, log lines included, as a subprocess.run result holds them."""
    import types
    from cnnctc.cli import run_captured
    code, out, err = run_captured(args)
    return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)


@pytest.fixture
def in_process_cli(capfd, monkeypatch):
    """``run(*args, **env)``: `cnnctc ARGS` in this process with ``env`` set for the call, where the
    command's behaviour is the point and not a new process; what native code writes to descriptors 1
    and 2 meanwhile counts as its stdout and stderr."""
    def run(*args, **env):
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, str(value))
            capfd.readouterr()
            result = run_in_process(*args)
            native = capfd.readouterr()
        result.stdout, result.stderr = native.out + result.stdout, native.err + result.stderr
        return result
    return run


def as_foreground_job():
    """``preexec_fn`` for a child that a test signals as a terminal would (Ctrl-C, Ctrl-\\, hang-up).

    A process inherits ignored signals: a job started with ``&`` by a shell without job control
    (as CI runners do) ignores SIGINT and SIGQUIT, and ``nohup`` ignores SIGHUP. cnnctc rightly
    leaves an ignored signal ignored, so such a child would run on as if never signalled; a
    terminal's foreground job has all three at their defaults.
    """
    for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


def seed_weights(net, seed, head_scale=1.0):
    """Seeded random weights whose columns pick varied classes: He-normal weights, batch norms that
    pass values through, small biases; the head (``Prediction.``) scaled by ``head_scale``."""
    import numpy as np
    import mindspore as ms
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        shape = tuple(p.shape)
        if "moving_variance" in p.name or "gamma" in p.name:
            value = np.ones(shape)
        elif p.name.endswith("weight") and len(shape) > 1:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        else:
            value = rng.standard_normal(shape) * 0.1
        if p.name.startswith("Prediction."):
            value = value * head_scale
        p.set_data(ms.Tensor(value.astype(np.float32)))
    return net


OPTIMIZER_SLOTS = ("moment", "mean_square", "mean_grad")


def official_like_state(net, seed=0, weights_dtype="float32", optimizer_dtype="float16"):
    """Random values under ``net``'s parameter names, plus the optimizer state the hub file carries.

    Returns (entries for mindspore.save_checkpoint, {name: numpy weights}).
    """
    import numpy as np
    import mindspore as ms
    rng = np.random.default_rng(seed)
    weights = {}
    entries = []
    for p in net.get_parameters():
        value = rng.standard_normal(p.shape).astype(weights_dtype)
        if "moving_variance" in p.name:
            value = np.abs(value) + 0.5
        weights[p.name] = value
        entries.append({"name": p.name, "data": ms.Tensor(value)})
        if p.requires_grad:
            for slot in OPTIMIZER_SLOTS:
                entries.append({"name": f"{slot}.{p.name}", "data": ms.Tensor(np.zeros(p.shape, optimizer_dtype))})
    entries.append({"name": "global_step", "data": ms.Tensor(np.array([123], np.int32))})
    entries.append({"name": "learning_rate", "data": ms.Tensor(np.array(5e-4, np.float32))})
    return entries, weights


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory):
    """A full-size checkpoint with the official names and optimizer state: (path, weights)."""
    import mindspore as ms
    from cnnctc.network import CNNCTC
    entries, weights = official_like_state(CNNCTC(), seed=1)
    path = tmp_path_factory.mktemp("full") / "official_like.ckpt"
    ms.save_checkpoint(entries, str(path))
    return path, weights


NARROW = 64  # output_channel of the small variant the tests build on


@pytest.fixture(scope="session")
def narrow_checkpoint(tmp_path_factory):
    """A narrow (output_channel=64) checkpoint with float16 weights and optimizer state."""
    import mindspore as ms
    from cnnctc.network import CNNCTC
    entries, weights = official_like_state(CNNCTC(output_channel=NARROW), seed=2, weights_dtype="float16")
    path = tmp_path_factory.mktemp("narrow") / "narrow.ckpt"
    ms.save_checkpoint(entries, str(path))
    return path, weights
