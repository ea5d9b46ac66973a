"""Lay this package out as the MindSpore Hub client expects it, so ``mindspore_hub.load`` uses it.

For each registered uid the hub reads ``<hub_dir>/<uid>.md`` (the card) and imports
``mindspore_hub_conf.py`` from the code directory ``<hub_dir>/<uid's folder>/<last part of
repo-link>``. Writing both here saves the hub its git checkout (which cannot work for 1.5 and
later: their official entry imports a module no branch has); the checkpoint path is the same
cache ``cnnctc download`` fills. No MindSpore import here.

A code directory holds a record of what this command laid out (``.cnnctc-hub``: each file's path
and SHA-256). It is replaced, with or without ``--overwrite``, only when nothing in it would be
lost: every file is one it wrote and is unchanged (or is byte for byte the file about to be laid
out there); Python's ``__pycache__`` files do not count. Any other file (yours, added or edited)
is named, with how many there are, and nothing is replaced. A folder it did not write is replaced
with ``--overwrite`` only when it holds nothing to lose either.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

from ._files import Busy, exclusive_lock, rename_folder_no_replace, rename_no_replace, umask_mode
from .errors import CnnctcError
from .manifest import _PACKAGE_DIR, _assets_dir, cache_root, inside
from .registry import get_model, hub_models

__all__ = ["hub_install", "hub_conf", "HUB_CONF", "MARKER"]

MARKER = ".cnnctc-hub"  # in a code directory this command wrote: the record of the files it laid out
_MAX_RECORD = 4 << 20    # a record is a few KB (one line per file): a larger marker is not one

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
    if root.is_symlink() and not root.exists():   # mkdir would say only "File exists"
        raise CnnctcError(f"hub directory {root} is a symbolic link to {os.readlink(root)}, which does not exist; "
                          "create that folder, or pass an existing folder as --hub-dir")
    if root.exists() and not root.is_dir():
        raise CnnctcError(f"hub directory {root} is a file; pass a folder as --hub-dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.TemporaryFile(dir=root)
        probe.close()
    except OSError as exc:
        raise CnnctcError(f"cannot write to the hub directory {root} ({exc.strerror or exc}); "
                          "pass a writable folder as --hub-dir") from None


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _layout(folder):
    """Relative POSIX path -> SHA-256 of every file under ``folder`` (what this command laid out)."""
    files = {}
    for parent, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(parent, name)
            rel = Path(path).relative_to(folder).as_posix()
            if rel != MARKER:
                files[rel] = _sha256(path)
    return files


def _read_record(folder):
    """(written by hub-install?, its record of the files it laid out, or None when the marker holds
    none: written before records were kept, or damaged). The marker is data from a file: read
    defensively."""
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return False, None
    try:
        with open(marker, "rb") as f:
            text = f.read(_MAX_RECORD + 1)
        data = json.loads(text.decode("utf-8")) if len(text) <= _MAX_RECORD else None
    except (OSError, ValueError, RecursionError):
        return True, None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return True, None
    return True, files


def _would_lose(folder, record, fresh):
    """The files under ``folder`` that replacing it would lose, sorted: every file that is neither
    unchanged since hub-install wrote it (``record``: path -> SHA-256) nor byte for byte the file
    about to be laid out at its place (``fresh``); anything that is not a regular file. Without a
    record (a code directory written before records were kept), a file at a path of the layout
    counts as hub-install's. Python's own __pycache__/*.pyc files are not lost."""
    lost = []

    def unreadable(exc):
        lost.append(Path(exc.filename).relative_to(folder).as_posix() + "/")

    for parent, dirs, names in os.walk(folder, onerror=unreadable):
        dirs.sort()
        for name in list(dirs):
            if os.path.islink(os.path.join(parent, name)):   # hub-install never writes links
                lost.append(Path(parent, name).relative_to(folder).as_posix())
        for name in sorted(names):
            path = os.path.join(parent, name)
            rel = Path(path).relative_to(folder).as_posix()
            if rel == MARKER:
                continue
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    lost.append(rel)
                    continue
                if os.path.basename(parent) == "__pycache__" and name.endswith(".pyc"):
                    continue
                if record is None:
                    if rel not in fresh:
                        lost.append(rel)
                    continue
                known = {record.get(rel), fresh.get(rel)} - {None}
                if not known or _sha256(path) not in known:
                    lost.append(rel)
            except OSError:
                lost.append(rel)
    return sorted(lost)


def _files(count):
    return f"{count} file{'' if count == 1 else 's'}"


def _replace_problem(folder, code_dir, overwrite, fresh):
    """Why the code directory at ``folder`` (shown as ``code_dir``) may not be replaced, or None."""
    if not os.path.lexists(folder):
        return None
    ours, record = _read_record(folder)
    lost = _would_lose(folder, record, fresh)
    them = "it" if len(lost) == 1 else "them"
    if ours and lost:
        return (f"{code_dir} holds {_files(len(lost))} that cnnctc hub-install did not write or that changed since "
                f"(first: {lost[0]}); replacing the folder would lose {them}: move {them} out of the folder, then run "
                "again (--overwrite never replaces such files)")
    if not ours and lost:
        return (f"{code_dir} exists and was not written by cnnctc hub-install (the hub client's own checkout, or "
                f"your files): it holds {_files(len(lost))} that replacing it would lose (first: {lost[0]}); move it "
                "away, then run again (--overwrite never replaces such files)")
    if not ours and not overwrite:
        return (f"{code_dir} exists and was not written by cnnctc hub-install (it holds nothing hub-install would "
                "lose); move it away, or replace it with --overwrite")
    return None


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


def _check_target(code_dir, card, entry, overwrite, fresh):
    if code_dir.is_symlink() or (code_dir.exists() and not code_dir.is_dir()):
        raise CnnctcError(f"{code_dir} exists and is not a folder; move it away")
    problem = _replace_problem(code_dir, code_dir, overwrite, fresh)
    if problem:
        raise CnnctcError(problem)
    _refuse_foreign_card(card, entry, overwrite)


def _remove_dead_staging(base, code_dir):
    """Remove the work folders of a hub-install that was killed (under the lock no live one has any)."""
    pattern = re.compile(rf"^\.{re.escape(code_dir.name)}\.(old\.)?[a-z0-9_]{{8}}$")
    for path in base.iterdir():
        if pattern.match(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _install_locked(base, entry, code_dir, card, overwrite):
    manifest = entry.manifest
    _remove_dead_staging(base, code_dir)
    if code_dir.is_symlink() or (code_dir.exists() and not code_dir.is_dir()):
        raise CnnctcError(f"{code_dir} exists and is not a folder; move it away")
    # Build the code directory beside its final place, then swap it in, so that a hub client
    # never sees half of it. mkdtemp makes it 0700: it gets the modes the umask gives.
    staging = Path(tempfile.mkdtemp(prefix=f".{code_dir.name}.", dir=base))
    old = None
    try:
        shutil.copytree(_PACKAGE_DIR, staging / "cnnctc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copytree(_assets_dir(), staging / "assets", dirs_exist_ok=True)
        (staging / "mindspore_hub_conf.py").write_text(hub_conf(manifest.uid))
        fresh = _layout(staging)
        (staging / MARKER).write_text(json.dumps({"written_by": "cnnctc hub-install", "uid": manifest.uid,
                                                  "files": fresh}, indent=0, sort_keys=True) + "\n")
        _apply_umask(staging)
        _check_target(code_dir, card, entry, overwrite, fresh)
        if code_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{code_dir.name}.old.", dir=base))
            moved = old / code_dir.name
            code_dir.rename(moved)
            # Again, now that it is out of the way: the user may have put something there meanwhile.
            problem = _replace_problem(moved, code_dir, overwrite, fresh)
            if problem:
                try:
                    rename_folder_no_replace(moved, code_dir)
                except OSError:   # something else appeared at its place meanwhile: keep the folder beside it
                    kept = base / f"{code_dir.name}.moved-aside-{os.getpid()}"
                    try:
                        os.rename(moved, kept)
                    except OSError:
                        kept = moved
                    old = None   # never removed: it holds files that are not hub-install's
                    raise CnnctcError(f"{code_dir} changed while hub-install ran and something else appeared at "
                                      f"its place meanwhile; nothing was replaced, the folder is now {kept}: move "
                                      "it back") from None
                raise CnnctcError(f"{problem} (it changed while hub-install ran; it is left as it is)")
        try:
            rename_folder_no_replace(staging, code_dir)
        except FileExistsError:
            raise CnnctcError(f"{code_dir} appeared while hub-install ran (not written by it); it is left as it "
                              "is: move it away, then run again") from None
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

    A code directory already there is replaced only when nothing in it would be lost: every file in
    it is one this command wrote, unchanged since (``overwrite`` also replaces a folder it did not
    write that holds no file to lose); otherwise the first such file is named, with how many there
    are, and nothing is replaced. A card that is not the published one is replaced only with
    ``overwrite``.
    """
    root = cache_root(hub_dir)
    _check_writable(root)
    entries = hub_models() if model is None and manifest is None else [get_model(model, manifest=manifest)]
    try:
        return [_install_one(root, entry, overwrite) for entry in entries]
    except OSError as exc:
        raise CnnctcError(f"cannot lay out the hub files under {root}: {exc}") from None
