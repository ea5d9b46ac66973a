"""The asset manifest: which checkpoint, where it lives, and how its inputs and outputs are read.

Like torchvision's weights enums, the URL, the hash, the alphabet and the preprocessing constants
travel together, so a fine-tuned checkpoint is served by writing another manifest
(``CNNCTC_MANIFEST``). No MindSpore import here.
"""
import dataclasses
import json
import os
from pathlib import Path, PurePosixPath

from .errors import ManifestError

__all__ = ["Manifest", "load_manifest", "default_manifest_path", "cache_root"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def _assets_dir():
    # Installed wheels carry the assets inside the package; a source tree (and the hub's code
    # directory) keeps them at the repository root.
    inside = _PACKAGE_DIR / "assets"
    return inside if (inside / "manifest.json").is_file() else _PACKAGE_DIR.parent / "assets"


def default_manifest_path():
    """The manifest shipped with the package (the hub card's asset)."""
    return _assets_dir() / "manifest.json"


def cache_root(cache_dir=None):
    """The cache shared with the MindSpore Hub client: CNNCTC_CACHE_DIR, else ~/.mscache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CNNCTC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".mscache"


@dataclasses.dataclass(frozen=True)
class Preprocess:
    height: int = 32
    max_width: int = 100
    mean: tuple = (121.58949, 123.93914, 123.418655)
    std: tuple = (65.70353, 65.142426, 68.61079)
    color: str = "RGB"
    resample: str = "bicubic"
    pad: str = "repeat-last-column"


@dataclasses.dataclass(frozen=True)
class Manifest:
    uid: str
    file_name: str
    url: str
    sha256: str
    alphabet: str
    model_name: str = "cnnctc"
    format: str = "ckpt"
    mindspore_version: str = ""
    network: dict = dataclasses.field(default_factory=dict)
    input_shape: tuple = (-1, 3, 32, 100)
    preprocess: Preprocess = Preprocess()
    max_label_length: int = 13
    lowercase_labels: bool = True
    extra: dict = dataclasses.field(default_factory=dict)
    source: str = ""

    @property
    def num_class(self):
        """Symbols plus the CTC blank, which is the last class."""
        return len(self.alphabet) + 1

    @property
    def blank_index(self):
        return len(self.alphabet)

    def network_kwargs(self):
        """Keyword arguments for :class:`cnnctc.network.CNNCTC` that build this manifest's network."""
        kwargs = {"num_class": self.num_class, "final_feature_width": 26}
        kwargs.update(self.network)
        return kwargs

    def cache_path(self, cache_dir=None):
        """Where the hub client keeps this asset: <cache>/<uid without its last part>/<file name>."""
        return cache_root(cache_dir).joinpath(*PurePosixPath(self.uid).parent.parts, self.file_name)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data, source=""):
        if not isinstance(data, dict):
            raise ManifestError(f"{source or 'manifest'}: expected a JSON object")
        missing = [k for k in ("uid", "file_name", "url", "sha256", "alphabet") if not data.get(k)]
        if missing:
            raise ManifestError(f"{source or 'manifest'}: missing {', '.join(missing)}")
        sha = str(data["sha256"]).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ManifestError(f"{source or 'manifest'}: sha256 must be 64 hex digits, got {data['sha256']!r}")
        if len(set(data["alphabet"])) != len(data["alphabet"]):
            raise ManifestError(f"{source or 'manifest'}: the alphabet repeats a character")
        if "/" in data["file_name"] or "\\" in data["file_name"]:
            raise ManifestError(f"{source or 'manifest'}: file_name must be a bare file name")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "source", "preprocess"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["sha256"] = sha
        if "input_shape" in kwargs:
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        pre = dict(data.get("preprocess") or {})
        for key in ("mean", "std"):
            if key in pre:
                pre[key] = tuple(float(v) for v in pre[key])
        try:
            kwargs["preprocess"] = Preprocess(**pre)
        except TypeError as exc:
            raise ManifestError(f"{source or 'manifest'}: bad 'preprocess' section: {exc}") from None
        manifest = cls(**kwargs, extra={k: v for k, v in data.items() if k not in known | {"preprocess"}},
                       source=str(source))
        num_class = manifest.network.get("num_class")
        if num_class is not None and num_class != manifest.num_class:
            raise ManifestError(f"{source or 'manifest'}: network.num_class is {num_class} but the alphabet "
                                f"has {len(manifest.alphabet)} symbols (+1 blank = {manifest.num_class})")
        return manifest


def load_manifest(path=None):
    """Read a manifest: ``path``, else ``CNNCTC_MANIFEST``, else the one shipped with the package."""
    if isinstance(path, Manifest):
        return path
    path = Path(path or os.environ.get("CNNCTC_MANIFEST") or default_manifest_path()).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    return Manifest.from_dict(data, source=path)
