"""cnnctc.load and checkpoint mapping on real MindSpore checkpoints written by the tests."""
import numpy as np
import pytest
import mindspore as ms
from mindspore.nn.utils import no_init_parameters

import cnnctc
from conftest import NARROW, write_manifest
from cnnctc.checkpoint import read_checkpoint, slim
from cnnctc.errors import CheckpointError, IntegrityError
from cnnctc.registry import load_manifest
from cnnctc.network import CNNCTC


def values(net):
    return {p.name: p.asnumpy() for p in net.get_parameters()}


def test_official_names_with_optimizer_state_load_fully(full_checkpoint):
    path, written = full_checkpoint
    net = cnnctc.load(path, device_target="CPU")
    got = values(net)
    assert got.keys() == written.keys()
    assert all(np.array_equal(got[n], written[n]) for n in written)
    assert not net.training and ms.get_context("mode") == ms.GRAPH_MODE
    out = net(ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 100)).astype(np.float32)))
    assert out.shape == (2, 26, 37)


def test_float16_values_are_cast(narrow_checkpoint):
    path, written = narrow_checkpoint
    net = cnnctc.load(path, output_channel=NARROW)
    got = values(net)
    assert all(v.dtype == np.float32 for v in got.values())
    assert all(np.array_equal(got[n], written[n].astype(np.float32)) for n in written)


def test_load_without_checkpoint_downloads_verifies_and_loads(tmp_path, serve, narrow_checkpoint, monkeypatch):
    path, written = narrow_checkpoint
    server = serve(path.read_bytes())
    manifest = write_manifest(tmp_path / "m.json", url=server.url, sha256=server.sha256, file_name="narrow.ckpt",
                              network={"output_channel": NARROW})
    monkeypatch.setenv("CNNCTC_MANIFEST", str(manifest))
    monkeypatch.setenv("CNNCTC_ALLOW_HTTP", "1")
    net = cnnctc.load()
    assert load_manifest().cache_path().is_file()
    got = values(net)
    assert all(np.array_equal(got[n], written[n].astype(np.float32)) for n in written)
    # A corrupted cached file is refused before MindSpore reads it.
    cached = load_manifest().cache_path()
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        cnnctc.load()
    assert len(server.log) == 1


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        cnnctc.load(tmp_path / "nope.ckpt", output_channel=NARROW)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CheckpointError, match="not a readable MindSpore checkpoint"):
        cnnctc.load(junk, output_channel=NARROW)


def test_checkpoint_of_another_network_names_the_differences(tmp_path, narrow_checkpoint):
    path, _ = narrow_checkpoint
    # The full networks these two build are refused before any weight is loaded: their random
    # initial values (seconds at the full size) would never be used.
    with no_init_parameters(), pytest.raises(
            CheckpointError, match=r"another shape: FeatureExtraction\.ConvNet\.conv0_1\.weight "
                                   r"\(4, 3, 3, 3\) \(network wants \(32, 3, 3, 3\)\)"):
        cnnctc.load(path, output_channel=512)  # a narrow checkpoint forced into the full network
    other = tmp_path / "other.ckpt"
    ms.save_checkpoint([{"name": "backbone.conv.weight", "data": ms.Tensor(np.ones((4, 3, 3, 3), np.float32))}],
                       str(other))
    with no_init_parameters(), pytest.raises(CheckpointError,
                                             match=r"162 missing: .*1 unexpected: backbone\.conv\.weight"):
        cnnctc.load(other)
    wrong_head = tmp_path / "wrong_head.ckpt"
    ms.save_checkpoint([{"name": "Prediction.weight", "data": ms.Tensor(np.ones((20, 64), np.float32))}],
                       str(wrong_head))
    with pytest.raises(CheckpointError, match="head has 20 classes but the alphabet"):
        cnnctc.load(wrong_head)


def test_the_variant_follows_the_checkpoint(narrow_checkpoint):
    path, _ = narrow_checkpoint
    net = cnnctc.load(path)  # no output_channel given: read from the head
    assert net.hidden_size == NARROW and net.num_class == 37


def test_slim_drops_optimizer_state_and_loads_back_identical(tmp_path, narrow_checkpoint):
    path, written = narrow_checkpoint
    out = tmp_path / "slim.ckpt"
    kept, dropped = slim(path, out)
    state = read_checkpoint(out)
    assert kept == len(written) and dropped == 3 * sum(1 for p in CNNCTC(output_channel=NARROW).trainable_params()) + 2
    assert not [n for n in state if n.startswith(("moment.", "mean_square.", "mean_grad.", "global_step"))]
    assert out.stat().st_size < path.stat().st_size / 2
    got = values(cnnctc.load(out, output_channel=NARROW))
    assert all(np.array_equal(got[n], written[n].astype(np.float32)) for n in written)
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_reports_bad_checkpoints_in_one_line(tmp_path, in_process_cli):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage" * 50)
    for src in (tmp_path / "missing.ckpt", junk):
        run = in_process_cli("slim", src, tmp_path / "out.ckpt")   # native lines on descriptor 2 included
        assert run.returncode == 1
        assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("cnnctc: error: "), run.stderr
        assert str(src) in run.stderr
        assert not (tmp_path / "out.ckpt").exists()
