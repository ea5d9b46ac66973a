"""Lay this package out as the MindSpore Hub client expects it, so ``mindspore_hub.load`` uses it.

For each registered uid the hub reads ``<hub_dir>/<uid>.md`` (the card) and imports
``mindspore_hub_conf.py`` from the code directory ``<hub_dir>/<uid's folder>/<last part of
repo-link>``. Writing both here saves the hub its git checkout (which cannot work for 1.5 and
later: their official entry imports a module no branch has); the checkpoint path is the same
cache ``cnnctc download`` fills. No MindSpore import here.
"""
import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from ._files import Busy, exclusive_lock, rename_folder_no_replace, rename_no_replace, umask_mode
from .errors import CnnctcError
from .manifest import _PACKAGE_DIR, _assets_dir, cache_root, inside
from .registry import get_model, hub_models

__all__ = ["hub_install", "hub_conf", "HUB_CONF", "MARKER"]

MARKER = ".cnnctc-hub"  # in a code directory this command wrote: it may replace that one again

# The text of mindspore_hub_conf.py at the repository root (a test keeps the two equal): the
# default hub uid's network.
HUB_CONF = '''"""MindSpore Hub entry point: the hub imports this file by path and calls ``create_network``."""
from cnnctc.loader import create_network  # noqa: F401  (the hub looks this name up)
'''


def hub_conf(uid):
    """The mindspore_hub_conf.py hub-install writes for ``uid``: that uid's network, whatever the
    environment (CNNCTC_MANIFEST) says."""
    return (f'''"""MindSpore Hub entry point of {uid}, written by `cnnctc hub-install`."""\n'''
            "import functools\n\n"
            "from cnnctc.loader import create_network as _create_network\n\n"
            f"create_network = functools.partial(_create_network, model={uid!r})\n")


def _check_writable(root):
    if root.exists() and not root.is_dir():
        raise CnnctcError(f"hub directory {root} is a file; pass a folder as --hub-dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.TemporaryFile(dir=root)
        probe.close()
    except OSError as exc:
        raise CnnctcError(f"cannot write to the hub directory {root} ({exc.strerror or exc}); "
                          "pass a writable folder as --hub-dir") from None


def _refuse_foreign(code_dir, card, entry, overwrite):
    """Refuse to replace a code directory or a card this command did not write, unless asked."""
    if overwrite:
        return
    if code_dir.exists() and not (code_dir / MARKER).is_file():
        raise CnnctcError(f"{code_dir} exists and was not written by cnnctc hub-install (the hub client's own "
                          "checkout, or your files); move it away, or replace it with --overwrite")
    _refuse_foreign_card(card, entry, overwrite)


def _refuse_foreign_card(card, entry, overwrite):
    if overwrite:
        return
    if card.exists() and (not card.is_file() or card.read_bytes() != entry.card.read_bytes()):
        raise CnnctcError(f"{card} exists and is not the published card of {entry.uid}; move it away, or "
                          "replace it with --overwrite")


def _install_one(root, entry, overwrite):
    manifest = entry.manifest
    if entry.card is None:
        raise CnnctcError(f"{manifest.uid} is a user manifest without a hub card; hub-install lays out "
                          "registered uids only (see `cnnctc list`)")
    if entry.bundled is not None:
        raise CnnctcError(f"{manifest.uid} is shipped inside cnnctc, not published on MindSpore Hub; load it with "
                          f"cnnctc.load(model={manifest.uid!r}) (hub-install lays out the hub's uids)")
    uid = PurePosixPath(manifest.uid)
    base = inside(root, *uid.parent.parts)
    repo_link = manifest.repo_link or manifest.model_name
    code_name = PurePosixPath(repo_link.rstrip("/")).name
    code_dir = inside(base, code_name)
    card = inside(base, f"{uid.name}.md")
    base.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(base):  # one hub-install at a time per version folder; no lock file is left
            return _install_locked(base, entry, code_dir, card, overwrite)
    except Busy:
        raise CnnctcError(f"another cnnctc hub-install is writing {code_dir} right now; let it finish, then run "
                          "again") from None


def _check_target(code_dir, card, entry, overwrite):
    if code_dir.is_symlink() or (code_dir.exists() and not code_dir.is_dir()):
        raise CnnctcError(f"{code_dir} exists and is not a folder; move it away")
    _refuse_foreign(code_dir, card, entry, overwrite)


def _remove_dead_staging(base, code_dir):
    """Remove the work folders of a hub-install that was killed (under the lock no live one has any)."""
    pattern = re.compile(rf"^\.{re.escape(code_dir.name)}\.(old\.)?[a-z0-9_]{{8}}$")
    for path in base.iterdir():
        if pattern.match(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _install_locked(base, entry, code_dir, card, overwrite):
    manifest = entry.manifest
    _remove_dead_staging(base, code_dir)
    _check_target(code_dir, card, entry, overwrite)
    # Build the code directory beside its final place, then swap it in, so that a hub client
    # never sees half of it. mkdtemp makes it 0700: it gets the modes the umask gives.
    staging = Path(tempfile.mkdtemp(prefix=f".{code_dir.name}.", dir=base))
    old = None
    try:
        shutil.copytree(_PACKAGE_DIR, staging / "cnnctc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copytree(_assets_dir(), staging / "assets", dirs_exist_ok=True)
        (staging / "mindspore_hub_conf.py").write_text(hub_conf(manifest.uid))
        (staging / MARKER).write_text(f"written by cnnctc hub-install for {manifest.uid}\n")
        _apply_umask(staging)
        _check_target(code_dir, card, entry, overwrite)  # again: the user may have put something there meanwhile
        if code_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{code_dir.name}.old.", dir=base))
            code_dir.rename(old / code_dir.name)
            if not overwrite and not (old / code_dir.name / MARKER).is_file():  # replaced between check and move
                rename_folder_no_replace(old / code_dir.name, code_dir)
                raise CnnctcError(f"{code_dir} was replaced by a folder cnnctc hub-install did not write while it "
                                  "ran; it is left as it is: move it away, or replace it with --overwrite")
        try:
            rename_folder_no_replace(staging, code_dir)
        except FileExistsError:
            raise CnnctcError(f"{code_dir} appeared while hub-install ran (not written by it); it is left as it "
                              "is: move it away, or replace it with --overwrite") from None
        _place_card(entry, card, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return card, code_dir


def _apply_umask(folder):
    """Give ``folder`` and everything in it the modes the user's umask gives (copytree kept the source's)."""
    dir_mode, file_mode = umask_mode(folder=True), umask_mode()
    os.chmod(folder, dir_mode)
    for parent, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(parent, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(parent, name), file_mode)


def _place_card(entry, card, overwrite):
    """Put the published card at ``card``: never over a file that appeared meanwhile unless it is the
    same card (or ``overwrite``)."""
    tmp_card = card.with_name(f".{card.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(entry.card, tmp_card)
        os.chmod(tmp_card, umask_mode())
        try:
            rename_no_replace(tmp_card, card)
        except FileExistsError:
            _refuse_foreign_card(card, entry, overwrite)  # the same card, or --overwrite
            os.replace(tmp_card, card)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_card.unlink()


def hub_install(hub_dir=None, model=None, *, manifest=None, overwrite=False):
    """Write the card and the code directory of ``model`` (default: every hub uid) under
    ``hub_dir``; returns a list of (card path, code dir).

    A code directory or card already there is replaced only when this command wrote it (or with
    ``overwrite``): the hub client's own checkout, or files of yours, are refused otherwise.
    """
    root = cache_root(hub_dir)
    _check_writable(root)
    entries = hub_models() if model is None and manifest is None else [get_model(model, manifest=manifest)]
    try:
        return [_install_one(root, entry, overwrite) for entry in entries]
    except OSError as exc:
        raise CnnctcError(f"cannot lay out the hub files under {root}: {exc}") from None
