"""Identical bytes under several names: hub versions 1.3 to 1.7 publish one file under four names
(1.8 to 1.10 another under three), so a verified copy already in the cache serves the others
without the network."""
import contextlib
import hashlib
import logging
import os
from pathlib import Path

from ..errors import CnnctcError
from ..registry import list_models
from .cache import CHUNK_SIZE, file_sha256, open_file, present, read_stamp, write_stamp

log = logging.getLogger(__name__)


def verified_copies(root, sha256, target):
    """Cached files other than ``target`` whose stamps (or registry paths) say they hash to ``sha256``."""
    seen, found = {os.path.abspath(target)}, []
    candidates = []
    for depth in ("*", "*/*", "*/*/*", "*/*/*/*"):
        candidates += [stamp.with_name(stamp.name[:-len(".verified")])
                       for stamp in root.glob(f"{depth}/*.verified")]
    candidates += [entry.manifest.cache_path(root) for entry in list_models() if entry.manifest.sha256 == sha256]
    for path in candidates:
        key = os.path.abspath(path)
        if key in seen or not present(path):
            continue
        seen.add(key)
        stamp = read_stamp(path)
        if stamp is not None and stamp.get("sha256") not in (None, sha256):
            continue  # stamped as another file: not worth hashing
        try:
            if file_sha256(path) == sha256:
                found.append(Path(path))
        except CnnctcError:
            continue
    return found


def from_identical_copy(sources, target, sha256):
    """Make ``target`` from one of ``sources``, verified files with the same SHA-256: a hard link
    where the filesystem allows, else a copy verified while it is written. Returns ``target`` or None."""
    for source in sources:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                os.link(source, tmp)
                how = "linked"
            except OSError:
                digest = hashlib.sha256()
                with open_file(source) as src, open(tmp, "wb") as out:
                    for block in iter(lambda: src.read(CHUNK_SIZE), b""):
                        digest.update(block)
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                if digest.hexdigest() != sha256:
                    continue
                how = "copied"
            os.replace(tmp, target)
        except (OSError, CnnctcError) as exc:
            log.debug("cannot reuse %s: %s", source, exc)
            continue
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        # A link changes the shared inode's ctime: both names get a fresh stamp of the verified hash.
        for path in {source, target}:
            with contextlib.suppress(OSError):
                write_stamp(path, sha256, os.stat(path))
        log.info("%s %s from the identical verified file %s", how, target.name, source)
        return target
    return None
