"""The model registry: one entry per registered uid, the single path every entry point takes.

An entry holds its card (the hub's, byte for byte, or the bundled model's), the manifest (asset,
hash, alphabet, preprocessing, network configuration, accuracy, dataset) and the architecture it
builds. The seven MindSpore Hub uids are downloaded; ``cnnctc/mini-synth`` and
``cnnctc/synth-scene`` ship inside the package. A user's own manifest (``CNNCTC_MANIFEST`` or
``--manifest``) becomes an entry of the
same kind without a card. Adding a hub version, or another model, is one more entry here.
This module owns the manifests it resolves (``load_manifest``); ``manifest`` never imports it.
No MindSpore import here.
"""
import dataclasses
import importlib
import os
from pathlib import Path

from .errors import CnnctcError, shown
from .manifest import Manifest, _assets_dir, read_manifest_file

__all__ = ["ModelEntry", "get_model", "list_models", "hub_models", "load_manifest", "bundled_asset", "build_network",
           "DEFAULT_MODEL", "BUNDLED_MODEL", "SCENE_MODEL", "ARCHITECTURES"]

DEFAULT_MODEL = "mindspore/1.3/cnnctc_mjstiiit"
# Shipped inside the package; only ever used when asked for by name (never in place of the hub model).
BUNDLED_MODEL = "cnnctc/mini-synth"   # the smallest and fastest: plain rendered words (tests, demos)
SCENE_MODEL = "cnnctc/synth-scene"    # reads real photographs: the way to read offline

# Architecture name (a manifest's ``model_name``, what the hub passes to create_network) -> builder.
ARCHITECTURES = {"cnnctc": "cnnctc.network:CNNCTC"}


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered model: its manifest, the path of its card (none for a user manifest) and, for
    a model shipped inside the package, the path of its weights."""
    manifest: Manifest
    card: Path = None
    bundled: Path = None

    @property
    def uid(self):
        return self.manifest.uid


def _builder(name):
    try:
        module, _, attr = ARCHITECTURES[name.lower()].partition(":")
    except KeyError:
        raise CnnctcError(f"unknown network {shown(name)}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    return getattr(importlib.import_module(module), attr)


def build_network(manifest, **overrides):
    """An untrained network of ``manifest``'s architecture and configuration (``overrides`` win)."""
    kwargs = {**manifest.network_kwargs(), **overrides}
    return _builder(manifest.model_name)(**kwargs)


# The published CNN-CTC of the model zoo (r1.3 to r1.10 share network and transform: SPEC 2, 3, 8).
_CNNCTC_MJSTIIIT = {
    "model_name": "cnnctc",
    "format": "ckpt",
    "alphabet": "0123456789abcdefghijklmnopqrstuvwxyz",
    "network": {"final_feature_width": 26, "output_channel": 512},
    "input_shape": [-1, 3, 32, 100],
    "preprocess": {"color": "RGB", "height": 32, "max_width": 100, "resample": "bicubic",
                   "mean": [121.58949, 123.93914, 123.418655], "std": [65.70353, 65.142426, 68.61079],
                   "pad": "repeat-last-column"},
    "max_label_length": 13,
    "lowercase_labels": True,
}
_SHA_8597 = "3468204da46492286ed466c9bab9572443b4e7d359396a5e38b42ceb3d0a6c6f"
_SHA_840 = "93bf15cb0429aa70c57e313f285f90e2bd08c874bac9a517cdce50a849ce1d56"
# Written by benchmarks/train_mini_synth.py (it prints both after rebuilding the file).
_MINI_SYNTH_SHA256 = "60cb2cb0a79dcbfad37f054b51ced4c26349bf778823b4154c5239ae85633308"
_MINI_SYNTH_ACCURACY = {"clean": 95.4, "noise": 91.0}


def _hub_cnnctc(version, sha256, accuracy, dataset):
    # The hub's file names: cnnctc_ascend_v130_..._acc85.97.ckpt, ..._v1100_..._acc84.0.ckpt
    file_name = f"cnnctc_ascend_v{version.replace('.', '')}0_mjstiiit_official_cv_acc{accuracy}.ckpt"
    return dict(_CNNCTC_MJSTIIIT, uid=f"mindspore/{version}/cnnctc_mjstiiit", file_name=file_name,
                url=f"https://download.mindspore.cn/models/r{version}/{file_name}", sha256=sha256,
                mindspore_version=version, accuracy=float(accuracy), train_dataset=dataset,
                repo_link=f"https://gitee.com/mindspore/models/tree/r{version}/official/cv/cnnctc")


# Every hub version of cnnctc_mjstiiit: two checkpoints, seven uids (1.3-1.7 share one file's bytes).
_ENTRIES = [
    _hub_cnnctc("1.3", _SHA_8597, "85.97", "mjstiiit"),
    _hub_cnnctc("1.5", _SHA_8597, "85.97", "mjstiiit"),
    _hub_cnnctc("1.6", _SHA_8597, "85.97", "mjstiiit"),
    _hub_cnnctc("1.7", _SHA_8597, "85.97", "mjstiiit"),
    _hub_cnnctc("1.8", _SHA_840, "84.0", "MJ-ST-IIIT"),
    _hub_cnnctc("1.9", _SHA_840, "84.0", "MJ-ST-IIIT"),
    _hub_cnnctc("1.10", _SHA_840, "84.0", "MJ-ST-IIIT"),
]


def _card_path(manifest):
    version = manifest.uid.split("/")[1]
    return _assets_dir() / "cards" / version / f"{manifest.uid.rsplit('/', 1)[1]}.md"


# The bundled model: the hub's architecture, alphabet and transform at width 64, trained from random
# weights on words `cnnctc render` drew (Debian fonts, clean and --noise). benchmarks/train_mini_synth.py
# rebuilds the file (deterministically) and measured the accuracies below on held-out rendered words (other
# seeds, `cnnctc eval`); they are not comparable with the hub's benchmark accuracy, so the manifest's
# `accuracy` stays empty. Card: assets/cards/cnnctc/mini-synth.md.
_MINI_SYNTH = dict(
    _CNNCTC_MJSTIIIT, uid=BUNDLED_MODEL, file_name="cnnctc_mini_synth.ckpt",
    url="bundled:models/cnnctc_mini_synth.ckpt",  # inside the package's assets; never downloaded
    sha256=_MINI_SYNTH_SHA256, network={"final_feature_width": 26, "output_channel": 64},
    mindspore_version="2.8.0", train_dataset="rendered words (cnnctc render: DejaVu, Liberation, FreeFont)",
    rendered_word_accuracy=_MINI_SYNTH_ACCURACY)


# The bundled model that reads photographs: cnnctc/mini-synth fine-tuned on synthetic scene words
# (`cnnctc render --style scene`), never on a photograph. benchmarks/train_synth_scene.py builds it and
# measured the numbers below; the real crops only chose the checkpoint (validation). Card:
# assets/cards/cnnctc/synth-scene.md.
_SYNTH_SCENE_SHA256 = '91046240b5e78c13496e3e4aff776865ad9b844a38ab37275c4e474466d60f6c'
_SYNTH_SCENE = dict(
    _CNNCTC_MJSTIIIT, uid=SCENE_MODEL, file_name="cnnctc_synth_scene.ckpt",
    url="bundled:models/cnnctc_synth_scene.ckpt", sha256=_SYNTH_SCENE_SHA256,
    network={"final_feature_width": 26, "output_channel": 64}, mindspore_version="2.8.0",
    train_dataset="synthetic scene words only (cnnctc render --style scene: 240,000 images, 170 Debian "
                  "font files, scikit-image photo backgrounds), after cnnctc/mini-synth's plain renders",
    validated_on="11 of 26 real word crops (PaddleOCR and mmocr docs and tests), which chose the checkpoint: "
                 "an optimistic number",
    real_word_accuracy={'correct': 11, 'crops': 26, 'accuracy': 42.31},
    rendered_word_accuracy={'held-out scene words': 80.7, 'unseen fonts and sizes': 64.6})


def _bundled_path(manifest):
    return _assets_dir() / "models" / manifest.file_name


_REGISTRY = {}
for _data in _ENTRIES:
    _manifest = Manifest.from_dict(_data, source=f"registry:{_data['uid']}")
    _REGISTRY[_manifest.uid] = ModelEntry(_manifest, _card_path(_manifest))
_manifest = Manifest.from_dict(_MINI_SYNTH, source=f"registry:{BUNDLED_MODEL}")
_REGISTRY[BUNDLED_MODEL] = ModelEntry(_manifest, _assets_dir() / "cards" / "cnnctc" / "mini-synth.md",
                                      _bundled_path(_manifest))
_manifest = Manifest.from_dict(_SYNTH_SCENE, source=f"registry:{SCENE_MODEL}")
_REGISTRY[SCENE_MODEL] = ModelEntry(_manifest, _assets_dir() / "cards" / "cnnctc" / "synth-scene.md",
                                    _bundled_path(_manifest))


def list_models():
    """The registered entries, in registry order: the hub's uids, then the bundled models."""
    return list(_REGISTRY.values())


def hub_models():
    """The entries MindSpore Hub publishes (what ``hub-install`` lays out)."""
    return [entry for entry in _REGISTRY.values() if entry.bundled is None]


def bundled_asset(manifest):
    """The packaged weights file for ``manifest`` when it names a bundled model (same uid and
    SHA-256), else None. The caller verifies the file's hash before use."""
    entry = _REGISTRY.get(manifest.uid)
    if entry is None or entry.bundled is None or entry.manifest.sha256 != manifest.sha256:
        return None
    return entry.bundled


def registered_contradiction(manifest):
    """Where ``manifest`` names a registered model (its uid, or its weights by their SHA-256) but is
    not it (other weights, or another alphabet or preprocessing), as a phrase; else None."""
    named = _REGISTRY.get(manifest.uid)
    if named is not None and named.manifest.sha256 != manifest.sha256:
        return (f"it names the model {manifest.uid} but other weights (sha256 {manifest.sha256[:12]}..., not "
                f"{named.manifest.sha256[:12]}...)")
    for entry in _REGISTRY.values():
        known = entry.manifest
        if known.sha256 != manifest.sha256:
            continue
        for field, label in (("alphabet", "alphabet"), ("preprocess", "preprocessing"), ("input_shape", "input shape")):
            if getattr(manifest, field) != getattr(known, field):
                return (f"it names the weights of {known.uid} (sha256 {known.sha256[:12]}...) but gives them "
                        f"another {label} than that model's")
    return None


def check_export_description(values, manifest, where, *, subject, ending):
    """Refuse an exported file's description (its metadata or sidecar ``values`` and the ``manifest``
    they carry) that contradicts itself or the registry, in one line: ``where: ...; ending``."""
    from .manifest import description_problem
    problem = description_problem(values, manifest)
    if problem:
        raise CnnctcError(f"{where}: {subject} contradicts itself ({problem}); {ending}")
    problem = registered_contradiction(manifest)
    if problem:
        raise CnnctcError(f"{where}: {problem}; {ending}")


def get_model(model=None, *, manifest=None):
    """The entry for ``model`` (a uid), or for ``manifest`` (a JSON path or a Manifest: a user entry).

    With neither: ``CNNCTC_MANIFEST`` when set, else the default uid. An unknown uid is an
    error listing the known ones.
    """
    if model is not None and manifest is not None:
        raise CnnctcError("give a model uid or a manifest, not both")
    if isinstance(manifest, Manifest):
        registered = _REGISTRY.get(manifest.uid)
        return registered if registered is not None and registered.manifest == manifest else ModelEntry(manifest)
    if manifest is None and model is None:
        manifest = os.environ.get("CNNCTC_MANIFEST") or None
        model = None if manifest else DEFAULT_MODEL
    if manifest is not None:
        return ModelEntry(read_manifest_file(manifest))
    if not isinstance(model, str):
        raise CnnctcError(f"a model is named by its uid (a string), got {shown(model)}")
    entry = _REGISTRY.get(model.strip().strip("/"))
    if entry is None:
        raise CnnctcError(f"unknown model {shown(model)}; known: {', '.join(_REGISTRY)}")
    return entry


def load_manifest(path=None, *, model=None):
    """A manifest: ``path`` (a JSON file or a Manifest), else the registry's entry for ``model``
    (default: ``CNNCTC_MANIFEST`` if set, else the default hub uid)."""
    if isinstance(path, Manifest):
        return path
    return get_model(model, manifest=path).manifest
