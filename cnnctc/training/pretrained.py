"""The starting weights of a run: ``--pretrained hub|UID|PATH|none`` resolved, read and loaded.

A local file is read (and refused if damaged or not finite) while the run is checked; a
registered asset is fetched only after everything else is checked.
"""
import dataclasses
import logging
import os
import re
from pathlib import Path

from ..checkpoint import ALPHABET_KEY, load_weights, read_checkpoint
from ..download import TRY_OFFLINE_OPTION, fetch, sha256_file
from ..errors import CheckpointError, CnnctcError, shown
from ..lineage import LINEAGE_KEY, started_from_checkpoint, started_from_model
from ..registry import SCENE_MODEL, get_model, list_models
from .store import first_non_finite

__all__ = ["resolve_pretrained", "init_from_pretrained"]

log = logging.getLogger(__name__)


# A hub uid: owner/version/name, each part a plain name.
_UID_LIKE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*){2,}/?$")


def pretrained_source(pretrained, *, model=None, manifest=None):
    """(local checkpoint path, None), (None, registered manifest to fetch) or (None, None) for none."""
    if pretrained is None or (isinstance(pretrained, str) and pretrained.strip().lower() == "none"):
        return None, None
    if not isinstance(pretrained, (str, os.PathLike)):
        raise CnnctcError(f"--pretrained must be hub, a model uid, a checkpoint path or none, got {shown(pretrained)}")
    text = os.fspath(pretrained)
    if text == "hub":
        return None, get_model(model, manifest=manifest).manifest
    if text.strip().strip("/") in {entry.uid for entry in list_models()}:
        return None, get_model(text).manifest
    path = Path(text).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir():
        raise CheckpointError(f"--pretrained {text} is a folder; name a checkpoint file in it "
                              "(e.g. its best.ckpt or newest cnnctc-<step>.ckpt)")
    if _UID_LIKE.match(text) and not text.endswith(".ckpt"):
        get_model(text)  # an unknown uid: its error lists the known ones
    raise CheckpointError(f"--pretrained {text}: no such checkpoint file (give hub, a model uid, a .ckpt path "
                          "or none)")


def resolve_pretrained(pretrained, *, model=None, manifest=None):
    """(checkpoint path, manifest of its model or None) for a ``pretrained`` setting; (None, None) for none.

    ``pretrained`` is "hub" (the asset of ``model``/``manifest``, downloaded and verified),
    a registered uid (that entry's asset), a checkpoint path, or None / "none".
    """
    path, source = pretrained_source(pretrained, model=model, manifest=manifest)
    if path is None and source is not None:
        path = fetch_pretrained(source)
    return path, source


def fetch_pretrained(source):
    """``fetch(source)``; a failure's way to try the package offline is named as finetune takes it."""
    try:
        return fetch(source)
    except CnnctcError as exc:
        text = str(exc)
        if TRY_OFFLINE_OPTION not in text:
            raise
        raise type(exc)(text.replace(TRY_OFFLINE_OPTION, f"--pretrained {SCENE_MODEL}")) from None


@dataclasses.dataclass
class Pretrained:
    path: Path
    state: dict
    alphabet: str       # the alphabet its head was trained for
    started_from: dict  # the lineage's account of these weights


def read_pretrained(path, source_manifest, fallback_alphabet, given=None):
    """The weights to start from: a fetched registered asset (``source_manifest``) or a local file
    (named ``given`` by the user), checked to be finite, with its alphabet and lineage."""
    state = read_checkpoint(path, weights_only=True)
    bad = first_non_finite(state.items())
    if bad is not None:
        raise CheckpointError(f"{path}: {bad} holds NaN or infinite values; it cannot be fine-tuned from")
    saved = state.get(ALPHABET_KEY)
    alphabet = saved if isinstance(saved, str) else (source_manifest.alphabet if source_manifest else
                                                     fallback_alphabet)
    if source_manifest is not None:  # fetched and verified: its hash is the card's
        started_from = started_from_model(source_manifest)
    else:
        started_from = started_from_checkpoint(given or path, sha256_file(path), state.get(LINEAGE_KEY))
    return Pretrained(Path(path), state, alphabet, started_from)


def load_pretrained(net, pretrained, alphabet):
    same_head = pretrained.alphabet == alphabet
    load_weights(net, pretrained.state, skip_prefixes=() if same_head else ("Prediction.",),
                 source=str(pretrained.path))
    log.info("initialised from %s (%s)", pretrained.path, "all weights" if same_head else
             f"backbone only: the head is new for {len(alphabet) + 1} classes")


def init_from_pretrained(net, pretrained, manifest, alphabet):
    """Load the pretrained checkpoint into ``net``; the head only when the alphabet is the same.

    ``pretrained`` is as for :func:`resolve_pretrained` ("hub" means ``manifest``'s asset).
    """
    path, source = resolve_pretrained(pretrained, manifest=manifest)
    if path is None:
        log.info("starting from random weights")
        return
    load_pretrained(net, read_pretrained(path, source, manifest.alphabet), alphabet)
