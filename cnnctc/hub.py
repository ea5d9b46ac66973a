"""Lay this package out as the MindSpore Hub client expects it, so ``mindspore_hub.load`` uses it.

The hub reads ``<hub_dir>/<uid>.md`` (the card) and imports ``mindspore_hub_conf.py`` from the
code directory ``<hub_dir>/<uid's folder>/<last part of repo-link>``. Writing both here saves
the hub its git checkout; the checkpoint path is the same cache ``cnnctc download`` fills.
No MindSpore import here.
"""
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from .manifest import _PACKAGE_DIR, _assets_dir, cache_root, load_manifest

__all__ = ["hub_install", "HUB_CONF"]

# The text of mindspore_hub_conf.py at the repository root (a test keeps the two equal).
HUB_CONF = '''"""MindSpore Hub entry point: the hub imports this file by path and calls ``create_network``."""
from cnnctc.loader import create_network  # noqa: F401  (the hub looks this name up)
'''


def hub_install(hub_dir=None, manifest=None):
    """Write the card and the code directory under ``hub_dir``; returns (card path, code dir)."""
    manifest = load_manifest(manifest)
    uid = PurePosixPath(manifest.uid)
    base = cache_root(hub_dir).joinpath(*uid.parent.parts)
    repo_link = manifest.extra.get("repo_link") or manifest.model_name
    code_dir = base / PurePosixPath(repo_link.rstrip("/")).name
    card_src = _assets_dir() / f"{uid.name}.md"
    base.mkdir(parents=True, exist_ok=True)

    # Build the code directory beside its final place, then swap it in, so that a hub client
    # never sees half of it.
    staging = Path(tempfile.mkdtemp(prefix=f".{code_dir.name}.", dir=base))
    try:
        shutil.copytree(_PACKAGE_DIR, staging / "cnnctc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copytree(_assets_dir(), staging / "assets", dirs_exist_ok=True)
        (staging / "mindspore_hub_conf.py").write_text(HUB_CONF)
        if code_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{code_dir.name}.old.", dir=base))
            code_dir.rename(old / code_dir.name)
            staging.rename(code_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(code_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    card = base / f"{uid.name}.md"
    tmp_card = card.with_name(card.name + ".tmp")
    shutil.copyfile(card_src, tmp_card)
    tmp_card.replace(card)
    return card, code_dir
