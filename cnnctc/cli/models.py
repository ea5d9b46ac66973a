"""Commands about the models themselves: info, list, download, verify, hub-install, slim."""
import json
import os
import sys

from ..errors import CnnctcError
from ._args import Command, cache_arg, device_arg, entry, manifest_of, model_arg
from ._stdout import holds_unicode


def info_arguments(p):
    model_arg(p)
    cache_arg(p)
    device_arg(p)
    p.add_argument("--checkpoint", metavar="FILE", help="show where this .ckpt, .onnx or .mindir came from instead: "
                   "what it started from, was trained on and measured (its lineage)")
    p.add_argument("--json", action="store_true", help="print the model's manifest as JSON; with --checkpoint, "
                   "the file's lineage and its own manifest (the start for a CNNCTC_MANIFEST of your checkpoint)")


def info(args):
    if args.checkpoint:
        return _info_of_file(args)
    from ..download import check_cached
    model = entry(args)
    manifest = model.manifest
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=not holds_unicode(sys.stdout)))
        return 0
    from ..loader import select_device  # validates --device-target before anything is printed
    device = select_device(args.device_target)
    path = model.bundled or manifest.cache_path(args.cache_dir)  # a bundled model is never in the cache
    print(f"model:        {manifest.uid}")
    print(f"card:         {model.card or '(a user manifest: ' + manifest.source + ')'}")
    if manifest.accuracy is not None:
        said_by = "card" if model.card else "as the manifest says"
        print(f"accuracy:     {manifest.accuracy}% ({said_by}; trained on {manifest.train_dataset or '?'})")
    _print_measurements(manifest)
    print(f"asset:        {manifest.url}")
    print(f"sha256:       {manifest.sha256}")
    print(f"alphabet:     {manifest.alphabet} ({manifest.num_class} classes, blank = {manifest.blank_index})")
    print(f"{'file:       ' if model.bundled else 'cache path: '}  {path}")
    print(f"cache state:  {check_cached(manifest, args.cache_dir)}")
    from .._mindspore import mindspore as ms
    print(f"mindspore:    {ms.__version__}")
    print(f"device:       {device}")
    return 0


def _print_measurements(manifest):
    """A model measured elsewhere than on a benchmark (the bundled ones): what it was trained on,
    validated on and measured, as its manifest says (values of the wrong type are left out)."""
    extra = manifest.extra
    if manifest.accuracy is None and manifest.train_dataset:
        print(f"trained on:   {manifest.train_dataset}")
    if isinstance(extra.get("validated_on"), str):
        print(f"validated on: {extra['validated_on']}")
    measured = extra.get("rendered_word_accuracy")
    if isinstance(measured, dict):
        shown = [f"{name} {value:.2f}%" for name, value in measured.items()
                 if isinstance(value, (int, float)) and not isinstance(value, bool)]
        if shown:
            print(f"measured:     {', '.join(shown)} (held-out rendered words)")


def _info_of_file(args):
    """``info --checkpoint FILE``: where a .ckpt, .onnx or .mindir came from; with --json also the
    manifest of that very file (a start for a CNNCTC_MANIFEST of your own, without another
    model's card claims)."""
    from ..model_info import describe_lineage, lineage_json, read_model_lineage
    base = manifest_of(args) if (getattr(args, "model", None) or getattr(args, "manifest", None)) else None
    kind, lineage, manifest = read_model_lineage(args.checkpoint, base)
    if args.json:   # the file's data as it is, as valid JSON with no control character unescaped
        print(lineage_json({"file": str(args.checkpoint), "kind": kind, "lineage": lineage, "manifest": manifest},
                           ensure_ascii=not holds_unicode(sys.stdout)))
    else:
        print("\n".join(describe_lineage(args.checkpoint, kind, lineage)))
    return 0


def list_models(args):
    from ..download import check_cached
    from ..registry import bundled_asset, get_model, list_models as registered
    rows = [("uid", "accuracy", "size", "cached")]
    entries = registered()
    if getattr(args, "manifest", None):  # a user's manifest is listed (and checked) too
        entries.append(get_model(manifest=args.manifest))
    for model in entries:
        manifest = model.manifest
        state = check_cached(manifest, args.cache_dir)  # 'bundled' for a model shipped in the package
        bundled = bundled_asset(manifest)
        path = bundled or manifest.cache_path(args.cache_dir)
        size = "-" if state == "missing" else f"{path.stat().st_size / 2**20:.{1 if bundled else 0}f} MiB"
        rows.append((manifest.uid, f"{manifest.accuracy}" if manifest.accuracy is not None else "-", size, state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def download_arguments(p):
    model_arg(p)
    cache_arg(p)
    p.add_argument("--url", help="download from this URL (a mirror) instead; the manifest's SHA-256 still binds "
                   "unless --sha256 is given")
    p.add_argument("--sha256", help="with --url: the SHA-256 of another file to fetch")
    p.add_argument("--force", action="store_true", help="replace a cached file that fails verification")
    p.add_argument("--allow-http", action="store_true", help="allow a plain http:// URL")
    p.add_check(lambda args: "--sha256 names another file and needs --url URL (the file to fetch); add it, or "
                "leave --sha256 out" if args.sha256 and not args.url else None)


def download(args):
    from ..download import asset_for_url, fetch
    manifest = manifest_of(args)
    if args.sha256:
        manifest = asset_for_url(manifest, args.url, args.sha256)  # checked before any network access
    path = fetch(manifest, args.cache_dir, url=args.url, force=args.force, allow_http=args.allow_http or None,
                 quiet=args.quiet)
    print(path)
    return 0


def verify_arguments(p):
    model_arg(p)
    cache_arg(p)
    p.add_argument("path", nargs="?", help="file to check (default: the cached asset)")


def verify(args):
    from ..download import sha256_file
    model = entry(args)
    manifest = model.manifest
    path = args.path or model.bundled or manifest.cache_path(args.cache_dir)  # a bundled model: its packaged file
    if not args.path and not os.path.exists(path):
        raise CnnctcError(f"{path}: no such file; `cnnctc download --model {manifest.uid}` fetches it")
    actual = sha256_file(path)  # an explicit check reads every byte, whatever the stamp says
    if actual == manifest.sha256:
        print(f"OK  {path}  sha256 {actual}")
        return 0
    print(f"cnnctc: error: {path}: SHA-256 mismatch for {manifest.uid} (expected {manifest.sha256}, "
          f"actual {actual})", file=sys.stderr)
    return 1


def hub_install_arguments(p):
    model_arg(p)
    p.add_argument("--hub-dir", help="the hub's directory (default: CNNCTC_CACHE_DIR, else ~/.mscache)")
    p.add_argument("--overwrite", action="store_true", help="also replace a card that is not the published one, "
                   "and a code directory this command did not write that holds no file to lose; a code directory "
                   "holding files it did not write (or that changed since) is never replaced: the first is named")


def hub_install(args):
    from ..hub import hub_install as install
    for card, code_dir in install(args.hub_dir, getattr(args, "model", None),
                                  manifest=getattr(args, "manifest", None), overwrite=args.overwrite):
        print(f"{card}  (code: {code_dir})")
    return 0


def slim_arguments(p):
    p.add_argument("src", help="checkpoint to read (left untouched)")
    p.add_argument("dst", help="weights-only checkpoint to write")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def slim(args):
    from ..checkpoint import slim as write_slim
    kept, dropped = write_slim(args.src, args.dst, overwrite=args.overwrite)
    print(f"{args.dst}: kept {kept} entries, dropped {dropped} optimizer entries")
    return 0


COMMANDS = [
    Command("info", "show the model's card, asset, cache path and state, MindSpore version and device; or, with "
            "--checkpoint, where a file came from", info_arguments, info,
            ("cnnctc info --model mindspore/1.8/cnnctc_mjstiiit", "cnnctc info --checkpoint run/best.ckpt --json")),
    Command("list", "list every registered model with its accuracy, size and state: the hub uids (missing, "
            "verified or corrupt in the cache) and the bundled cnnctc/synth-scene and cnnctc/mini-synth", cache_arg,
            list_models, ("cnnctc list",)),
    Command("download", "download and verify the checkpoint; prints its local path", download_arguments, download,
            ("cnnctc download", "cnnctc download --model mindspore/1.8/cnnctc_mjstiiit --url https://mirror.example/"
             "cnnctc.ckpt")),
    Command("verify", "check a file's SHA-256 against the model's (exit 0 match, 1 otherwise)", verify_arguments,
            verify, ("cnnctc verify", "cnnctc verify ~/Downloads/cnnctc_ascend_v130_mjstiiit_official_cv_acc85.97.ckpt")),
    Command("hub-install", "lay the hub cards and this package out under the hub's cache so that "
            "mindspore_hub.load(uid) uses them (every registered uid, or --model UID)", hub_install_arguments,
            hub_install, ("cnnctc hub-install", "cnnctc hub-install --model mindspore/1.3/cnnctc_mjstiiit "
                          "--hub-dir ~/.mscache")),
    Command("slim", "write a weights-only copy of a checkpoint (drops the optimizer state)", slim_arguments, slim,
            ("cnnctc slim run/best.ckpt run/best.weights.ckpt",), uses_manifest=False),
]
