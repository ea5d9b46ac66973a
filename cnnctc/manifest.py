"""The manifest of a model: which checkpoint, where it lives, and how its inputs and outputs are read.

Like torchvision's weights enums, the URL, the hash, the alphabet and the preprocessing constants
travel together. The registry (``cnnctc.registry``) holds one manifest per registered uid and
resolves names to manifests (``load_manifest``); this module knows nothing of it. A user's own
checkpoint is served by a manifest JSON of the same shape (``CNNCTC_MANIFEST``). Every field is
checked when a manifest is read, and every path built from one stays inside its root.
No MindSpore import here.
"""
import dataclasses
import json
import math
import os
import re
from pathlib import Path, PurePosixPath

from .alphabet import check_alphabet
from .errors import ManifestError, shown

__all__ = ["Manifest", "Preprocess", "read_manifest_file", "description_problem", "cache_root", "inside",
           "is_inside"]

_PACKAGE_DIR = Path(__file__).resolve().parent
# A path part of a uid or a file name: letters, digits, '.', '_', '-', not starting with a dot.
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RESAMPLES = ("bicubic", "bilinear", "nearest")


def _assets_dir():
    # Installed wheels carry the assets inside the package; a source tree (and the hub's code
    # directory) keeps them at the repository root.
    inside_package = _PACKAGE_DIR / "assets"
    return inside_package if (inside_package / "cards").is_dir() else _PACKAGE_DIR.parent / "assets"


def expand_user(path, what):
    """``Path(path).expanduser()``, with a ManifestError naming ``what`` when '~' cannot be expanded
    (HOME unset and no passwd entry for this uid, or '~name' for a user who does not exist)."""
    path = Path(path)
    try:
        return path.expanduser()
    except RuntimeError:
        first = path.parts[0] if path.parts else "~"
        if first == "~":
            reason = (f"HOME is not set and user id {os.getuid()} has no passwd entry" if hasattr(os, "getuid")
                      else "the home directory is unknown")
        else:
            reason = f"there is no user {first[1:]!r}"
        raise ManifestError(f"{what} {str(path)!r}: cannot expand {first} ({reason}); give the full path "
                            "instead") from None


def cache_root(cache_dir=None):
    """The cache shared with the MindSpore Hub client: ``cache_dir``, else CNNCTC_CACHE_DIR, else ~/.mscache."""
    if cache_dir is not None:
        return expand_user(cache_dir, "the cache folder")
    env = os.environ.get("CNNCTC_CACHE_DIR")
    if env:
        return expand_user(env, "CNNCTC_CACHE_DIR")
    try:
        return Path.home() / ".mscache"
    except RuntimeError:  # HOME unset, and this uid has no passwd entry (a container's arbitrary uid)
        who = f"user id {os.getuid()}" if hasattr(os, "getuid") else "this user"
        raise ManifestError(f"cannot find a home directory for the cache (HOME is not set and {who} has no "
                            "passwd entry); set CNNCTC_CACHE_DIR (or --cache-dir) to a writable folder, or "
                            "set HOME") from None


def is_inside(root, path):
    """True when ``path``, with '.' and '..' resolved, lies strictly inside ``root``.

    This catches what manifest fields could do (a '..' part, an absolute uid). Symlinks are not
    followed: inside the cache only the user makes them (e.g. the asset kept on another disk).
    """
    root, path = os.path.normpath(os.path.abspath(root)), os.path.normpath(os.path.abspath(path))
    return path != root and os.path.commonpath([root, path]) == root


def inside(root, *parts):
    """``root`` joined with ``parts``; raises ManifestError unless the result stays inside ``root``."""
    path = Path(root).joinpath(*parts)
    if not is_inside(root, path):
        raise ManifestError(f"{'/'.join(map(str, parts))} leads outside {root}; refusing to write there")
    return path


def _safe_part(value, what, source):
    if not isinstance(value, str) or not _SAFE_PART.match(value) or len(value) > 200:
        raise ManifestError(f"{source}: {what} must be a plain name (letters, digits, '.', '_', '-'), got "
                            f"{shown(value)}")
    return value


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """The image transform the accuracy was measured with (SPEC section 3)."""
    height: int = 32
    max_width: int = 100
    mean: tuple = (121.58949, 123.93914, 123.418655)
    std: tuple = (65.70353, 65.142426, 68.61079)
    color: str = "RGB"
    resample: str = "bicubic"
    pad: str = "repeat-last-column"

    @classmethod
    def from_dict(cls, data, source):
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: 'preprocess' must be an object")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ManifestError(f"{source}: unknown preprocess field(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in ("height", "max_width"):
            if key in values and not (type(values[key]) is int and 1 <= values[key] <= 4096):
                raise ManifestError(f"{source}: preprocess.{key} must be a positive integer, got {shown(values[key])}")
        for key in ("mean", "std"):
            if key in values:
                seq = values[key]
                if (not isinstance(seq, (list, tuple)) or len(seq) != 3 or
                        not all(type(v) in (int, float) and math.isfinite(v) for v in seq)):
                    raise ManifestError(f"{source}: preprocess.{key} must be 3 numbers (R, G, B), got {shown(seq)}")
                values[key] = tuple(float(v) for v in seq)
        if "std" in values and min(values["std"]) <= 0:
            raise ManifestError(f"{source}: preprocess.std must be positive, got {list(values['std'])}")
        if values.get("color", "RGB") != "RGB":
            raise ManifestError(f"{source}: preprocess.color must be 'RGB', got {shown(values['color'])}")
        if values.get("resample", "bicubic") not in _RESAMPLES:
            raise ManifestError(f"{source}: preprocess.resample must be one of {', '.join(_RESAMPLES)}, "
                                f"got {shown(values['resample'])}")
        if values.get("pad", "repeat-last-column") != "repeat-last-column":
            raise ManifestError(f"{source}: preprocess.pad must be 'repeat-last-column', got {shown(values['pad'])}")
        return cls(**values)


_NETWORK_KEYS = ("num_class", "final_feature_width", "output_channel", "hidden_size")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything needed to fetch, build, feed and read one model."""
    uid: str
    file_name: str
    url: str
    sha256: str
    alphabet: str
    model_name: str = "cnnctc"        # the architecture the registry builds (and the hub asks for)
    format: str = "ckpt"
    mindspore_version: str = ""
    network: dict = dataclasses.field(default_factory=dict)
    input_shape: tuple = (-1, 3, 32, 100)
    preprocess: Preprocess = Preprocess()
    max_label_length: int = 13
    lowercase_labels: bool = True
    train_dataset: str = ""
    accuracy: float = None            # the card's word accuracy (%), when it names one
    repo_link: str = ""
    extra: dict = dataclasses.field(default_factory=dict)
    source: str = ""

    @property
    def num_class(self):
        """Symbols plus the CTC blank, which is the last class."""
        return len(self.alphabet) + 1

    @property
    def blank_index(self):
        return len(self.alphabet)

    @property
    def version(self):
        """The uid's folder below the cache root, e.g. ``mindspore/1.3``."""
        return str(PurePosixPath(self.uid).parent)

    def network_kwargs(self):
        """Keyword arguments for the architecture's builder that make this manifest's network."""
        kwargs = {"num_class": self.num_class, "final_feature_width": 26}
        kwargs.update(self.network)
        kwargs["num_class"] = self.num_class
        return kwargs

    def cache_path(self, cache_dir=None):
        """Where the hub client keeps this asset: <cache>/<uid without its last part>/<file name>."""
        return inside(cache_root(cache_dir), *PurePosixPath(self.uid).parent.parts, self.file_name)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """The JSON form (what ``CNNCTC_MANIFEST`` files hold)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "source")}
        data["preprocess"] = dataclasses.asdict(self.preprocess)
        data["preprocess"]["mean"] = list(self.preprocess.mean)
        data["preprocess"]["std"] = list(self.preprocess.std)
        data["input_shape"] = list(self.input_shape)
        data["network"] = {"num_class": self.num_class, **self.network}
        if data["accuracy"] is None:
            del data["accuracy"]
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data, source=""):
        """A checked manifest from its JSON form; ManifestError names the first bad field."""
        where = str(source) or "manifest"
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object")
        missing = [k for k in ("uid", "file_name", "url", "sha256", "alphabet") if k not in data or data[k] in ("", None)]
        if missing:
            raise ManifestError(f"{where}: missing {', '.join(missing)}")
        for key in ("uid", "file_name", "url", "sha256", "alphabet", "model_name", "format", "mindspore_version",
                    "train_dataset", "repo_link"):
            if key in data and not isinstance(data[key], str):
                raise ManifestError(f"{where}: {key} must be a string, got {shown(data[key])}")
        uid = PurePosixPath(data["uid"])
        if uid.is_absolute() or len(uid.parts) < 2 or data["uid"] != str(uid):
            raise ManifestError(f"{where}: uid must look like 'owner/version/name', got {shown(data['uid'])}")
        for part in uid.parts:
            _safe_part(part, "every part of uid", where)
        _safe_part(data["file_name"], "file_name", where)
        _safe_part(data.get("model_name", "cnnctc"), "model_name", where)
        sha = data["sha256"].lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ManifestError(f"{where}: sha256 must be 64 hex digits, got {shown(data['sha256'])}")
        alphabet = check_alphabet(data["alphabet"], f"{where}: the alphabet", ManifestError)
        network = data.get("network", {})
        if not isinstance(network, dict):
            raise ManifestError(f"{where}: network must be an object, got {shown(network)}")
        for key, value in network.items():
            if key not in _NETWORK_KEYS:
                raise ManifestError(f"{where}: unknown network field {shown(key)} (known: {', '.join(_NETWORK_KEYS)})")
            if type(value) is not int or value < 1:
                raise ManifestError(f"{where}: network.{key} must be a positive integer, got {shown(value)}")
        num_class = network.get("num_class")
        if num_class is not None and num_class != len(alphabet) + 1:
            raise ManifestError(f"{where}: network.num_class is {num_class} but the alphabet has {len(alphabet)} "
                                f"symbols (+1 blank = {len(alphabet) + 1})")
        max_length = data.get("max_label_length", 13)
        if type(max_length) is not int or max_length < 1:
            raise ManifestError(f"{where}: max_label_length must be a positive integer, got {shown(max_length)}")
        if not isinstance(data.get("lowercase_labels", True), bool):
            raise ManifestError(f"{where}: lowercase_labels must be true or false")
        accuracy = data.get("accuracy")
        if accuracy is not None and (type(accuracy) not in (int, float) or not 0 <= accuracy <= 100):
            raise ManifestError(f"{where}: accuracy must be a percentage, got {shown(accuracy)}")
        shape = data.get("input_shape", [-1, 3, 32, 100])
        if not isinstance(shape, (list, tuple)) or len(shape) != 4 or not all(type(v) is int for v in shape):
            raise ManifestError(f"{where}: input_shape must be 4 integers, got {shown(shape)}")
        preprocess = Preprocess.from_dict(data.get("preprocess", {}), where)
        if list(shape[1:]) != [3, preprocess.height, preprocess.max_width]:
            raise ManifestError(f"{where}: input_shape {list(shape)} contradicts the preprocessing, which makes "
                                f"3 x {preprocess.height} x {preprocess.max_width} images")

        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "source", "preprocess"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs.update(sha256=sha, input_shape=tuple(shape), network={k: v for k, v in network.items()
                                                                      if k != "num_class"},
                      preprocess=preprocess)
        if accuracy is not None:
            kwargs["accuracy"] = float(accuracy)
        extra = {k: v for k, v in data.items() if k not in known | {"preprocess"}}
        return cls(**kwargs, extra=extra, source=str(source))


def description_problem(values, manifest):
    """Where an export's top-level description (alphabet, num_class, height, ...) contradicts the
    manifest it carries, as a phrase, or None. Keys it does not hold are not checked."""
    pre = manifest.preprocess
    expected = {"alphabet": manifest.alphabet, "blank_index": manifest.blank_index, "num_class": manifest.num_class,
                "height": pre.height, "max_width": pre.max_width, "mean": list(pre.mean), "std": list(pre.std),
                "resample": pre.resample, "pad": pre.pad, "color": pre.color}
    for key, want in expected.items():
        if key in values and values[key] != want:
            said, wanted = shown(values[key]), shown(want)
            if said == wanted and isinstance(want, str) and isinstance(values[key], str):  # both cut alike
                first = next(i for i, (a, b) in enumerate(zip(values[key], want)) if a != b)
                wanted += f" (they differ from symbol {first + 1})"
            return f"its {key} says {said} but its manifest {wanted}"
    # The weights it says it was exported from: the same file everywhere it names one.
    lineage = values.get("cnnctc_lineage")
    named = {"source_sha256": values.get("source_sha256")}
    if isinstance(lineage, dict):
        exported = lineage.get("exported")
        named["the lineage's exported checkpoint"] = exported.get("checkpoint_sha256") if isinstance(
            exported, dict) else None
        if lineage.get("origin") == "model":   # exported from a model's own asset
            named["the lineage's model asset"] = lineage.get("sha256")
    for what, sha256 in named.items():
        if sha256 is not None and str(sha256).lower() != manifest.sha256:
            return f"{what} is {str(sha256)[:12]}... but its manifest's weights {manifest.sha256[:12]}..."
    return None


def read_manifest_file(path):
    """A manifest from a JSON file."""
    path = expand_user(path, "the manifest")
    if path.suffix.lower() in (".onnx", ".mindir", ".air", ".ckpt"):
        raise ManifestError(f"{path} is a model file, not a manifest: give it as --checkpoint (an export carries "
                            "its own manifest)")
    try:
        if not path.is_file():
            raise ManifestError(f"manifest not found: {path}" if not path.exists() else f"{path}: not a file")
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "cnnctc_manifest" in data and "uid" not in data:
            raise ManifestError(f"{path} describes an exported model (a .mindir's sidecar), not a manifest: give "
                                "the model file as --checkpoint")
    except ManifestError:
        raise
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    except RecursionError:
        raise ManifestError(f"cannot read manifest {path}: its JSON is nested too deeply") from None
    return Manifest.from_dict(data, source=path)

