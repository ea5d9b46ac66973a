"""Compatibility with the MindSpore Hub client's procedure (SPEC section 1), re-enacted for real."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from cnnctc.hub import HUB_CONF
from cnnctc.manifest import load_manifest

CARD = ROOT / "assets" / "cnnctc_mjstiiit.md"


def card_front_matter(text):
    """The fields the hub client reads from a card, parsed independently of the package."""
    front = text.split("---")[1]
    fields = dict(re.findall(r"^([\w-]+): *(\S.*)$", front, re.M))
    fields["asset-link"] = re.search(r"asset-link: <([^>]+)>", front).group(1)
    fields["asset-sha256"] = re.search(r"asset-sha256: (\w+)", front).group(1)
    fields["file-format"] = re.search(r"file-format: (\w+)", front).group(1)
    fields["repo-link"] = re.search(r"repo-link: <([^>]+)>", front).group(1)
    return fields


def test_card_is_the_published_one():
    shared = ROOT.parent / "shared" / "cnnctc" / "cnnctc_mjstiiit.md"
    if shared.exists():
        assert CARD.read_bytes() == shared.read_bytes()
    assert hashlib.sha256(CARD.read_bytes()).hexdigest()  # present and readable


def test_manifest_agrees_with_the_card():
    card, manifest = card_front_matter(CARD.read_text()), load_manifest()
    assert manifest.url == card["asset-link"]
    assert manifest.file_name == card["asset-link"].rsplit("/", 1)[1]
    assert manifest.sha256 == card["asset-sha256"]
    assert manifest.format == card["file-format"]
    assert manifest.model_name == card["model-name"]
    assert manifest.mindspore_version == card["mindspore-version"]
    assert manifest.extra["repo_link"] == card["repo-link"]
    assert manifest.uid == f"mindspore/{card['model-version']}/{card['model-name']}_{card['train-dataset']}"
    assert manifest.extra["evaluation"]["value"] == float(card["evaluation"].removeprefix("acc"))


def test_root_hub_conf_is_the_one_hub_install_writes():
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
net = conf.create_network("cnnctc")
import mindspore as ms
assert isinstance(net, ms.nn.Cell) and ms.get_context("mode") == ms.GRAPH_MODE
not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(ckpt))
print(json.dumps({"not_loaded": not_loaded, "digests": {p.name: hashlib.sha256(p.asnumpy().tobytes()).hexdigest()
                                                        for p in net.get_parameters()}}))
"""


def test_hub_procedure_with_hub_install(tmp_path, full_checkpoint):
    path, written = full_checkpoint
    hub = tmp_path / "hub"
    run = subprocess.run([sys.executable, "-m", "cnnctc", "hub-install", "--hub-dir", str(hub)],
                         env=subprocess_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    manifest = load_manifest()
    base = hub / "mindspore" / "1.3"
    assert (base / "cnnctc_mjstiiit.md").read_bytes() == CARD.read_bytes()
    code_dir = base / "cnnctc"  # the last part of the card's repo-link
    assert (code_dir / "mindspore_hub_conf.py").is_file()
    ckpt = manifest.cache_path(hub)
    assert ckpt == base / manifest.file_name
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
    run = subprocess.run([sys.executable, "-m", "cnnctc", "hub-install", "--hub-dir", str(hub)],
                         env=subprocess_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in base.iterdir()) == sorted(["cnnctc", "cnnctc_mjstiiit.md", manifest.file_name])


def test_create_network_defaults_and_unknown_names():
    from cnnctc.loader import create_network
    net = create_network("cnnctc")
    assert (net.num_class, net.hidden_size, net.final_feature_width) == (37, 512, 26)
    narrow = create_network("CNNCTC", output_channel=64)
    assert narrow.hidden_size == 64
    with pytest.raises(ValueError, match="unknown network 'crnn'; known names: cnnctc"):
        create_network("crnn")
