"""The model registry: every hub version of cnnctc_mjstiiit and the bundled model, one path for every entry point."""
import dataclasses
import hashlib
import os
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env, write_manifest
from cnnctc.errors import CnnctcError, ManifestError
from cnnctc.manifest import Manifest
from cnnctc.registry import BUNDLED_MODEL, DEFAULT_MODEL, get_model, hub_models, list_models

SHARED_CARDS = ROOT.parent / "shared" / "cnnctc" / "hub-cards"
VERSIONS = ["1.3", "1.5", "1.6", "1.7", "1.8", "1.9", "1.10"]


def card_fields(text):
    """The fields the hub client reads from a card, parsed independently of the package."""
    front = text.split("---")[1]
    fields = dict(re.findall(r"^([\w-]+): *(\S.*)$", front, re.M))
    fields["asset-link"] = re.search(r"asset-link: <([^>]+)>", front).group(1)
    fields["asset-sha256"] = re.search(r"asset-sha256: (\w+)", front).group(1)
    fields["repo-link"] = re.search(r"repo-link: <([^>]+)>", front).group(1)
    return fields


def cnnctc(*args, **env):
    return subprocess.run([sys.executable, "-m", "cnnctc", *map(str, args)], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=300)


def test_every_hub_version_is_registered_once():
    assert [e.uid for e in hub_models()] == [f"mindspore/{v}/cnnctc_mjstiiit" for v in VERSIONS]
    assert [e.uid for e in list_models()] == [e.uid for e in hub_models()] + [BUNDLED_MODEL, "cnnctc/synth-scene"]
    assert all(e.bundled is None for e in hub_models()) and get_model(BUNDLED_MODEL).bundled is not None
    assert get_model().uid == DEFAULT_MODEL == "mindspore/1.3/cnnctc_mjstiiit"  # never the bundled one


@pytest.mark.parametrize("version", VERSIONS)
def test_entry_card_and_manifest_match_the_published_card(version):
    entry = get_model(f"mindspore/{version}/cnnctc_mjstiiit")
    shared = SHARED_CARDS / version / "cnnctc_mjstiiit.md"
    if shared.exists():
        assert entry.card.read_bytes() == shared.read_bytes()
    card, manifest = card_fields(entry.card.read_text(encoding="utf-8")), entry.manifest
    assert manifest.url == card["asset-link"]
    assert manifest.file_name == card["asset-link"].rsplit("/", 1)[1]
    assert manifest.sha256 == card["asset-sha256"]
    assert manifest.model_name == card["model-name"]
    assert manifest.mindspore_version == card["mindspore-version"] == version
    assert manifest.repo_link == card["repo-link"]
    assert manifest.train_dataset == card["train-dataset"]
    assert manifest.accuracy == float(card["evaluation"].removeprefix("acc"))
    assert manifest.uid == f"mindspore/{card['model-version']}/{card['model-name']}_mjstiiit"
    # The network and the transform are the same in every branch (SPEC section 8).
    assert manifest.alphabet == "0123456789abcdefghijklmnopqrstuvwxyz" and manifest.num_class == 37
    assert manifest.preprocess.mean == (121.58949, 123.93914, 123.418655)


def test_two_checkpoints_under_seven_names():
    by_hash = {}
    for entry in hub_models():
        by_hash.setdefault(entry.manifest.sha256, []).append(entry.uid.split("/")[1])
    assert sorted(by_hash.values()) == [["1.3", "1.5", "1.6", "1.7"], ["1.8", "1.9", "1.10"]]
    assert len({e.manifest.file_name for e in hub_models()}) == 7


def test_unknown_uid_is_one_line_listing_the_known_ones():
    with pytest.raises(CnnctcError) as caught:
        get_model("mindspore/2.0/cnnctc_mjstiiit")
    assert all(e.uid in str(caught.value) for e in list_models())
    run = cnnctc("verify", "--model", "mindspore/9.9/nope")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "mindspore/1.10/cnnctc_mjstiiit" in run.stderr


def test_a_user_manifest_is_an_entry_of_its_own(tmp_path, monkeypatch):
    path = write_manifest(tmp_path / "mine.json", uid="me/v1/digits", alphabet="0123456789",
                          network={"output_channel": 64})
    monkeypatch.setenv("CNNCTC_MANIFEST", str(path))
    entry = get_model()
    assert entry.card is None and entry.uid == "me/v1/digits" and entry.manifest.num_class == 11
    assert entry.manifest.network_kwargs()["output_channel"] == 64
    assert get_model(DEFAULT_MODEL).uid == DEFAULT_MODEL  # an explicit uid still wins
    # The JSON form round-trips.
    again = Manifest.from_dict(json.loads(json.dumps(entry.manifest.to_dict())))
    assert again.replace(source="") == entry.manifest.replace(source="")


def test_cached_stand_in_under_a_later_name_fails_with_that_versions_hash(tmp_path):
    entry = get_model("mindspore/1.9/cnnctc_mjstiiit")
    cache = tmp_path / "cache"
    stand_in = entry.manifest.cache_path(cache)
    stand_in.parent.mkdir(parents=True)
    stand_in.write_bytes(b"not the 1.9 checkpoint" * 1000)
    before = hashlib.sha256(stand_in.read_bytes()).hexdigest()
    run = cnnctc("verify", "--model", entry.uid, "--cache-dir", cache)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert entry.manifest.sha256 in run.stderr and before in run.stderr
    run = cnnctc("list", "--cache-dir", cache)
    assert run.returncode == 0
    states = {line.split()[0]: line.split()[-1] for line in run.stdout.splitlines()[1:]}
    assert states[entry.uid] == "corrupt" and states["mindspore/1.8/cnnctc_mjstiiit"] == "missing"
    run = cnnctc("predict", "--model", entry.uid, "x.png", CNNCTC_CACHE_DIR=cache, CNNCTC_OFFLINE=1)
    assert run.returncode == 1 and entry.manifest.sha256 in run.stderr and "Traceback" not in run.stderr
    assert hashlib.sha256(stand_in.read_bytes()).hexdigest() == before  # refused, never deleted


@pytest.mark.parametrize("changes, message", [
    ({"uid": "../../x"}, "uid"),
    ({"uid": "/abs/olute/x"}, "uid"),
    ({"uid": "mindspore/../../x"}, "uid"),
    ({"file_name": "../x.ckpt"}, "file_name"),
    ({"alphabet": 12345}, "alphabet must be a string"),
    ({"alphabet": "abca"}, "repeats"),
    ({"network": "x"}, "network must be an object"),
    ({"network": {"output_channel": "wide"}}, "positive integer"),
    ({"preprocess": {"mean": ["a"]}}, "preprocess.mean"),
    ({"preprocess": {"std": [0, 1, 1]}}, "std must be positive"),
    ({"sha256": "abc"}, "64 hex digits"),
])
def test_bad_manifests_are_refused_before_any_path_is_built(tmp_path, changes, message):
    path = write_manifest(tmp_path / "bad.json", **changes)
    with pytest.raises(ManifestError, match=message):
        get_model(manifest=path)
    run = cnnctc("--manifest", path, "download", "--cache-dir", tmp_path / "cache")
    assert run.returncode == 1 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path.parent / "x").exists()


def test_one_download_serves_every_name_of_the_same_bytes(tmp_path, serve):
    """Two manifests that share a hash: one request, the second name made from the first copy."""
    from cnnctc.download import check_cached, fetch
    content = os.urandom(300_000)
    server = serve(content)
    first = get_model(manifest=write_manifest(tmp_path / "a.json", uid="mindspore/1.3/cnnctc_mjstiiit",
                                              url=server.url, sha256=server.sha256, file_name="a.ckpt")).manifest
    second = get_model(manifest=write_manifest(tmp_path / "b.json", uid="mindspore/1.5/cnnctc_mjstiiit",
                                               url=server.url, sha256=server.sha256, file_name="b.ckpt")).manifest
    a = fetch(first, allow_http=True, quiet=True)
    assert len(server.log) == 1
    b = fetch(second, allow_http=True, quiet=True, offline=True)  # no network needed, none used
    assert len(server.log) == 1
    assert b == second.cache_path() and b.read_bytes() == content and a.read_bytes() == content
    assert os.stat(a).st_ino == os.stat(b).st_ino  # a hard link on one filesystem
    assert check_cached(first) == check_cached(second) == "verified"
    # A third name in another version folder, through the CLI, offline.
    third = write_manifest(tmp_path / "c.json", uid="mindspore/1.6/cnnctc_mjstiiit", url=server.url,
                           sha256=server.sha256, file_name="c.ckpt")
    run = cnnctc("--manifest", third, "download", "--quiet", CNNCTC_OFFLINE=1)
    assert run.returncode == 0, run.stderr
    assert len(server.log) == 1 and second.cache_path().parent.parent.joinpath("1.6", "c.ckpt").read_bytes() == content


def test_a_copy_with_other_bytes_is_never_used(tmp_path, serve):
    from cnnctc.download import fetch
    server = serve(b"the real bytes" * 1000)
    first = get_model(manifest=write_manifest(tmp_path / "a.json", url=server.url, sha256=server.sha256,
                                              file_name="a.ckpt")).manifest
    path = fetch(first, allow_http=True, quiet=True)
    path.chmod(0o644)
    path.write_bytes(b"changed after it was verified" * 100)  # the stamp no longer matches
    second = get_model(manifest=write_manifest(tmp_path / "b.json", uid="mindspore/1.5/cnnctc_mjstiiit",
                                               url=server.url, sha256=server.sha256, file_name="b.ckpt")).manifest
    assert fetch(second, allow_http=True, quiet=True).read_bytes() == b"the real bytes" * 1000
    assert len(server.log) == 2  # downloaded, not made from the changed file


def test_a_manifest_that_names_a_registered_model_must_be_it():
    from cnnctc.registry import registered_contradiction
    mini = get_model("cnnctc/mini-synth").manifest
    assert registered_contradiction(mini) is None
    assert "names the model cnnctc/mini-synth but other weights" in registered_contradiction(
        mini.replace(sha256="ab" * 32))
    assert "another alphabet than that model's" in registered_contradiction(mini.replace(alphabet=mini.alphabet[::-1]))
    assert "another preprocessing" in registered_contradiction(
        mini.replace(uid="my/own", preprocess=dataclasses.replace(mini.preprocess, mean=(127.5, 127.5, 127.5))))
    # A model of the user's (its own uid and weights) is not the registry's business.
    assert registered_contradiction(mini.replace(uid="my/own", sha256="ab" * 32, alphabet="0123")) is None
