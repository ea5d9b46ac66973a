"""Compatibility with the MindSpore Hub client's procedure (SPEC section 1), re-enacted for real."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_in_process
from cnnctc.hub import HUB_CONF, hub_conf
from cnnctc.registry import get_model, hub_models

def test_root_hub_conf_is_the_package_entry_point():
    assert (ROOT / "mindspore_hub_conf.py").read_text() == HUB_CONF


# What mindspore_hub.load does with a code directory and a cached checkpoint (SPEC section 1,
# steps 3-5), without the hub client, which is not on PyPI.
HUB_PROCEDURE = r"""
import hashlib, importlib.util, json, os, sys
code_dir, ckpt = sys.argv[1], sys.argv[2]
sys.path.insert(0, code_dir)
spec = importlib.util.spec_from_file_location("mindspore_hub_conf", os.path.join(code_dir, "mindspore_hub_conf.py"))
conf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conf)
import cnnctc
assert os.path.dirname(os.path.dirname(cnnctc.__file__)) == code_dir, cnnctc.__file__
import mindspore as ms
mode = ms.get_context("mode")
net = conf.create_network("cnnctc")
assert isinstance(net, ms.nn.Cell) and ms.get_context("mode") == mode  # the entry point leaves the mode alone
not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(ckpt))
print(json.dumps({"not_loaded": not_loaded, "digests": {p.name: hashlib.sha256(p.asnumpy().tobytes()).hexdigest()
                                                        for p in net.get_parameters()}}))
"""


def hub_install(*args):
    return run_in_process("hub-install", *args)   # what it writes and says is the point, not a new process


def test_hub_procedure_with_hub_install(tmp_path, full_checkpoint):
    path, written = full_checkpoint
    hub = tmp_path / "hub"
    run = hub_install("--hub-dir", hub, "--model", "mindspore/1.3/cnnctc_mjstiiit")
    assert run.returncode == 0, run.stderr
    entry = get_model("mindspore/1.3/cnnctc_mjstiiit")
    base = hub / "mindspore" / "1.3"
    assert (base / "cnnctc_mjstiiit.md").read_bytes() == entry.card.read_bytes()
    assert sorted(p.name for p in hub.joinpath("mindspore").iterdir()) == ["1.3"]  # --model: that uid only
    code_dir = base / "cnnctc"  # the last part of the card's repo-link
    assert (code_dir / "mindspore_hub_conf.py").is_file()
    ckpt = entry.manifest.cache_path(hub)
    assert ckpt == base / entry.manifest.file_name
    os.symlink(path, ckpt)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the code dir provides cnnctc
    run = subprocess.run([sys.executable, "-c", HUB_PROCEDURE, str(code_dir), str(ckpt)], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["not_loaded"] == []
    assert result["digests"] == {n: hashlib.sha256(v.tobytes()).hexdigest() for n, v in written.items()}

    # Running hub-install again replaces the code directory whole, leaving no staging folders.
    run = hub_install("--hub-dir", hub, "--model", "mindspore/1.3/cnnctc_mjstiiit")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in base.iterdir()) == sorted(["cnnctc", "cnnctc_mjstiiit.md", entry.manifest.file_name])


# The hub client's procedure for every uid in one process, as one Python session loading several
# versions would: each version's code directory is imported by path, its own copy of the package.
# Every version builds the full-size network through its own entry point and loads every parameter
# from its checkpoint; only the first initializes its weights as the hub client does (about 6 s for
# the full size), the others skip the random initial values the checkpoint replaces at once
# (MindSpore's no_init_parameters), so the full-size weights are initialized once.
EVERY_VERSION = r"""
import contextlib, hashlib, importlib.util, json, os, sys
hub, versions = sys.argv[1], sys.argv[2:]
import mindspore as ms
from mindspore.nn.utils import no_init_parameters
results = {}
for index, (version, file_name) in enumerate(zip(versions[::2], versions[1::2])):
    code_dir = os.path.join(hub, "mindspore", version, "cnnctc")
    for name in [m for m in sys.modules if m == "cnnctc" or m.startswith("cnnctc.")]:
        del sys.modules[name]
    sys.path.insert(0, code_dir)
    spec = importlib.util.spec_from_file_location("mindspore_hub_conf", os.path.join(code_dir, "mindspore_hub_conf.py"))
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    import cnnctc
    assert os.path.dirname(os.path.dirname(cnnctc.__file__)) == code_dir, cnnctc.__file__
    with no_init_parameters() if index else contextlib.nullcontext():
        net = conf.create_network("cnnctc")
    assert isinstance(net, ms.nn.Cell) and net.hidden_size == 512, version  # the full size
    ckpt = os.path.join(hub, "mindspore", version, file_name)
    not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(ckpt))
    digest = hashlib.sha256(b"".join(p.asnumpy().tobytes() for p in net.get_parameters())).hexdigest()
    results[version] = {"not_loaded": not_loaded, "digest": digest}
    sys.path.remove(code_dir)
print(json.dumps(results))
"""


def test_every_uid_loads_through_the_hub_procedure(tmp_path, full_checkpoint):
    path, written = full_checkpoint
    hub = tmp_path / "hub"
    run = hub_install("--hub-dir", hub)
    assert run.returncode == 0, run.stderr
    args = []
    for entry in hub_models():
        version = entry.uid.split("/")[1]
        base = hub / "mindspore" / version
        assert (base / "cnnctc_mjstiiit.md").read_bytes() == entry.card.read_bytes(), version
        assert (base / "cnnctc" / "mindspore_hub_conf.py").read_text() == hub_conf(entry.uid)
        os.symlink(path, entry.manifest.cache_path(hub))
        args += [version, entry.manifest.file_name]
    run = subprocess.run([sys.executable, "-c", EVERY_VERSION, str(hub), *args], cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    expected = hashlib.sha256(b"".join(written[n].tobytes() for n in written)).hexdigest()
    assert sorted(results) == sorted(e.uid.split("/")[1] for e in hub_models())
    assert all(r == {"not_loaded": [], "digest": expected} for r in results.values()), results


def test_hub_install_refuses_bad_targets_in_one_line(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    run = hub_install("--hub-dir", a_file)
    assert run.returncode == 1 and "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1
    assert a_file.read_text() == "keep me"
    # A place nobody can write, root included (tests run as root, for whom mode bits do not bind).
    run = hub_install("--hub-dir", "/proc/cnnctc-hub")
    assert run.returncode == 1 and "Traceback" not in run.stderr and "cannot write" in run.stderr


def test_create_network_defaults_and_unknown_names():
    from mindspore.nn.utils import no_init_parameters
    from cnnctc.loader import create_network
    # The full size, without its random initial values (the hub procedure above builds it with them).
    with no_init_parameters():
        net = create_network("cnnctc")
    assert (net.num_class, net.hidden_size, net.final_feature_width) == (37, 512, 26)
    narrow = create_network("CNNCTC", output_channel=64)
    assert narrow.hidden_size == 64
    with pytest.raises(ValueError, match="unknown network 'crnn'; known names: cnnctc"):
        create_network("crnn")


def test_hub_install_never_replaces_what_it_did_not_write(tmp_path):
    hub = tmp_path / "hub"
    theirs = hub / "mindspore" / "1.3" / "cnnctc"
    theirs.mkdir(parents=True)
    (theirs / "mine.py").write_text("the hub client's checkout, or the user's code")
    run = hub_install("--hub-dir", hub, "--model", "mindspore/1.3/cnnctc_mjstiiit")
    assert run.returncode == 1 and "--overwrite" in run.stderr and "Traceback" not in run.stderr
    assert (theirs / "mine.py").read_text().startswith("the hub client's")
    card = hub / "mindspore" / "1.3" / "cnnctc_mjstiiit.md"
    (theirs / "mine.py").unlink()
    theirs.rmdir()
    card.write_text("an edited card")
    run = hub_install("--hub-dir", hub, "--model", "mindspore/1.3/cnnctc_mjstiiit")
    assert run.returncode == 1 and "not the published card" in run.stderr and card.read_text() == "an edited card"
    run = hub_install("--hub-dir", hub, "--model", "mindspore/1.3/cnnctc_mjstiiit", "--overwrite")
    assert run.returncode == 0, run.stderr
    assert card.read_bytes() == get_model("mindspore/1.3/cnnctc_mjstiiit").card.read_bytes()
    # What it wrote itself, it replaces without being asked.
    assert hub_install("--hub-dir", hub, "--model", "mindspore/1.3/cnnctc_mjstiiit").returncode == 0
