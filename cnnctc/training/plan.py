"""A run plan: every setting and path of a fine-tuning run checked before anything is built.

:meth:`RunPlan.check` goes, in order: settings, --out, the resumed run, --pretrained (a local
file is read), the datasets (opened and scanned), then a hub asset is fetched, so that a typo
never waits for a download. It needs no cluster: under msrun every process checks before
joining. The plan then holds what the run needs: the model's manifest, the alphabet, the
training set, the number of steps, where it starts and the lineage's account of its inputs.
"""
import collections
import dataclasses
import logging
import os
import tempfile
from pathlib import Path

from .._checks import output_channel_problem
from ..data import LabelFilter, LmdbDataset
from ..errors import CnnctcError, shown
from ..lineage import started_from_none
from ..registry import get_model, list_models
from .config import MAX_STEPS, RUN_FIELDS, TrainConfig, check_alphabet, flag, is_int
from .pretrained import fetch_pretrained, pretrained_source, read_pretrained
from .store import BEST_NAME, best_checkpoint_problem, holds_run, latest_checkpoint, read_resume_point, step_checkpoints

__all__ = ["RunPlan", "cluster_size", "resolve_rank"]

log = logging.getLogger(__name__)


def cluster_size():
    """(rank, world) of an initialised MindSpore communication, or None."""
    from mindspore.communication import management
    if not management.GlobalComm.INITED:
        return None
    return management.get_rank(), management.get_group_size()


def resolve_rank(rank, world):
    """(rank, world) as given, else those of a joined cluster, else a single process."""
    if rank is None and world is None:
        joined = cluster_size()
        if joined is not None:
            return joined
        if os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and os.environ.get("MS_WORKER_NUM", "1") != "1":
            raise CnnctcError("started by msrun but the cluster is not joined: call mindspore.communication.init() "
                              "first and pass rank= and world= (the cnnctc command does this)")
        return 0, 1
    rank, world = (0 if rank is None else rank), (1 if world is None else world)
    if not (is_int(world) and world >= 1 and is_int(rank) and 0 <= rank < world):
        raise CnnctcError(f"rank {rank!r} of world {world!r}: the world size must be at least 1 and the rank "
                          "in 0 .. world - 1")
    return int(rank), int(world)


def _dataset_names(value):
    """The dataset paths exactly as given (the lineage records them so)."""
    if value is None:
        return []
    return [os.fspath(p) for p in ([value] if isinstance(value, (str, os.PathLike)) else value)]


def _pretrained_name(pretrained):
    """How a run names its starting weights in its state: hub, a uid, a path, or none."""
    if pretrained is None:
        return "none"
    return os.fspath(pretrained).strip() if isinstance(pretrained, (str, os.PathLike)) else repr(pretrained)


def counts(counter):
    """``Counter`` of skip reasons as text: "2 empty, 1 too long", or "none"."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counter.items())) or "none"


class RunPlan:
    """The checked plan of one run; the arguments are those of :func:`cnnctc.training.finetune`."""

    def __init__(self, train, valid, out_dir, *, pretrained="hub", config=None, resume=None, manifest=None,
                 model=None, rank=None, world=None):
        self.train_names, self.valid_names = _dataset_names(train), _dataset_names(valid)
        self.train_paths = [Path(name) for name in self.train_names]
        self.valid_paths = [Path(name) for name in self.valid_names]
        self.out_dir = Path(out_dir)
        self.pretrained_arg = pretrained
        self.pretrained_name = _pretrained_name(pretrained)
        self.config = dataclasses.replace(config or TrainConfig())
        self.resume_dir = Path(resume) if resume else None
        self.model, self.manifest_arg = model, manifest
        self.rank, self.world = rank, world
        self.manifest = self.alphabet = self.train_set = None
        self.total_steps = self.steps_per_epoch = None
        self.resume = None             # a ResumePoint when resuming
        self.pretrained = None         # the starting weights (a Pretrained) until they are loaded
        self.started_from = started_from_none()
        self.created_out_dir = False
        self.checked = False

    def check(self):
        """Check every setting and path; raises CnnctcError naming the first problem and what to do."""
        self.rank, self.world = resolve_rank(self.rank, self.world)
        self.config.check()
        self.width_given = self.config.output_channel  # None: the pretrained weights' width
        if not self.train_paths:
            raise CnnctcError("no training dataset given (--train LMDB...)")
        self._check_out_dir()
        entry = get_model(self.model, manifest=self.manifest_arg)
        if self.resume_dir is not None:
            stored_model = self._take_resume_point()
            if self.model is None and self.manifest_arg is None and stored_model in {e.uid for e in list_models()}:
                entry = get_model(stored_model)
            if holds_run(self.out_dir) and os.path.realpath(self.out_dir) != os.path.realpath(self.resume_dir):
                raise CnnctcError(f"--out {self.out_dir} holds the checkpoints of another run; resume into "
                                  f"--out {self.resume_dir} or an empty folder")
        elif holds_run(self.out_dir):
            raise self.holds_run_error()
        self.manifest = entry.manifest
        width = self.manifest.network_kwargs()["final_feature_width"]
        if self.config.max_length > width:
            raise CnnctcError(f"max_length {self.config.max_length} exceeds the {width} columns the network reads")
        for option, paths in (("--train", self.train_paths), ("--valid", self.valid_paths)):
            for path in paths:
                if not path.exists():
                    raise CnnctcError(f"{option} {path}: no such LMDB dataset")
        local, source = (None, None) if self.resume_dir else pretrained_source(
            self.pretrained_arg, model=self.model, manifest=self.manifest_arg)
        if local is not None:
            self._read_pretrained(local, None)
        elif source is not None:  # a registered asset, fetched last: its manifest says its width
            self._take_width(source.network_kwargs()["output_channel"], source.uid)
        elif self.config.output_channel is None:  # random weights: the model's width
            self._set_width(self.manifest.network_kwargs()["output_channel"])
        if self.config.alphabet is not None:
            self.alphabet = self.config.alphabet
        elif self.pretrained is not None:
            self.alphabet = self.pretrained.alphabet
        else:
            self.alphabet = (source or self.manifest).alphabet
        check_alphabet(self.alphabet, "the alphabet")
        self._open_datasets()
        try:
            if source is not None:
                self._read_pretrained(fetch_pretrained(source), source)
            if self.rank == 0:
                self._make_out_dir()
        except BaseException:
            self.train_set.close()
            raise
        self.checked = True

    def holds_run_error(self):
        problem = best_checkpoint_problem(self.out_dir)
        if problem and not step_checkpoints(self.out_dir):   # no run's: a file of the user's under a run's name
            return CnnctcError(f"--out {self.out_dir} holds a {BEST_NAME} that is {problem}, where a run writes its "
                               f"best checkpoint; move {BEST_NAME} away, or choose another --out")
        try:
            point = read_resume_point(self.out_dir)
        except CnnctcError:
            point = None
        if point is not None and point.step >= point.total_steps:
            return CnnctcError(f"{self.out_dir} already holds a run, finished at step {point.step}; to train "
                               f"further, start a new run from its weights: {_new_run(point)}, or choose another "
                               "--out")
        return CnnctcError(f"{self.out_dir} already holds the checkpoints of a run; continue it by running the "
                           f"same command with --resume {self.out_dir} added, or choose another --out")

    def recheck_out_dir(self):
        """Under the run folder's lock: the folder is still what :meth:`check` found."""
        if self.resume is None:
            if holds_run(self.out_dir):
                raise self.holds_run_error()
        elif os.path.realpath(self.out_dir) == os.path.realpath(self.resume_dir):
            newest = latest_checkpoint(self.out_dir)
            if newest is None or newest.name != self.resume.path.name:
                raise CnnctcError(f"--resume {self.resume_dir}: the run moved on while this one started (another "
                                  f"--resume of it?); its newest checkpoint is now {newest}")

    def set_rank(self, rank, world):
        """This worker's place in the joined cluster, after :meth:`check` (the world size it planned for)."""
        rank, world = resolve_rank(rank, world)
        if self.checked and world != self.world:
            raise CnnctcError(f"the cluster has {world} ranks but the run was checked for {self.world}")
        self.rank, self.world = rank, world

    def trained_on(self):
        """The lineage's account of the training data and settings (without the step reached)."""
        kept = collections.Counter(number for number, _, _ in self.train_set.samples)
        config = self.config
        skip = {"alphabet", "seed", "steps", "batch_size"} | ({"epochs"} if config.steps else set())
        declared = getattr(self.train_set, "num_samples", None)
        return {"datasets": [{"path": name, "num_samples": declared[i] if declared else None,
                              "kept": kept[i]} for i, name in enumerate(self.train_names)],
                "skipped": dict(self.train_set.skipped), "alphabet": self.alphabet, "planned_steps": self.total_steps,
                "batch_size": config.batch_size, "workers": self.world,
                "recipe": {name: getattr(config, name) for name in RUN_FIELDS if name not in skip},
                "seed": config.seed}

    # -- the pieces of check -------------------------------------------------------------------------------

    def _read_pretrained(self, path, source):
        self.pretrained = read_pretrained(path, source, self.manifest.alphabet, given=self.pretrained_name)
        self.started_from = self.pretrained.started_from
        head = self.pretrained.state.get("Prediction.weight")
        if head is not None and len(head.shape) == 2:
            self._take_width(int(head.shape[1]), path)
        elif self.config.output_channel is None:
            self._set_width(self.manifest.network_kwargs()["output_channel"])

    def _take_width(self, width, source):
        """The run's width is that of the weights it starts from; a different --output-channel is an error."""
        given = self.width_given
        if given is not None and given != width:
            raise CnnctcError(f"--output-channel {given}, but --pretrained {source} is {width} channels wide; "
                              "leave --output-channel out (the width comes from the pretrained weights), or start "
                              "from random weights with --pretrained none")
        self._set_width(width)

    def _set_width(self, width):
        problem = output_channel_problem(width)
        if problem:
            raise CnnctcError(f"the network width {problem}")
        self.config = dataclasses.replace(self.config, output_channel=width)

    def _check_out_dir(self):
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise CnnctcError(f"--out {out} is a file; give a folder for the checkpoints")
        if (out / "data.mdb").exists():
            raise CnnctcError(f"--out {out} is an LMDB dataset; give another folder for the checkpoints")
        existing = out
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise CnnctcError(f"--out {out}: {existing} is a file, so the folder cannot be made there")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CnnctcError(f"--out {out}: {existing} is not writable; give a folder you can write to")

    def _make_out_dir(self):
        try:
            self.created_out_dir = not self.out_dir.exists()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.out_dir):
                pass
        except OSError as exc:
            raise CnnctcError(f"--out {self.out_dir}: cannot write there ({exc.strerror or exc})") from None

    def _take_resume_point(self):
        """Read the run's newest checkpoint and take its settings; returns the run's model uid."""
        point = read_resume_point(self.resume_dir)
        state, run, last = point.state, point.config, point.path
        given = self.pretrained_name
        self.pretrained_name = state.get("pretrained") or given  # runs saved before it was recorded: any
        if given not in ("hub", self.pretrained_name):
            raise CnnctcError(f"--resume {self.resume_dir}: the run continues from its own weights, --pretrained "
                              f"{given} does not apply; leave it out")
        new_run = _new_run(point)
        if point.step >= point.total_steps:
            raise CnnctcError(f"--resume {self.resume_dir}: the run is finished at step {point.step}; to train "
                              f"further, start a new run from its weights: {new_run} --steps "
                              f"{self.config.steps or 'N'}")
        self._refuse_changes(run, point.total_steps, new_run)
        # The run continues with its own settings; only how often it logs and saves (and how many
        # checkpoints it keeps) may change, and left at the default they stay the run's own.
        defaults, given = TrainConfig(), self.config
        habits = {name: getattr(run if getattr(given, name) == getattr(defaults, name) else given, name)
                  for name in ("save_every", "keep", "log_every")}
        self.config = dataclasses.replace(run, steps=point.total_steps, workers=given.workers, **habits)
        self.config.check()
        self.total_steps = point.total_steps
        self.resume = point
        self.started_from = point.lineage.get("started_from") or {"kind": "unknown"}  # saved before lineage
        log.info("resuming from %s at step %d of %d", last, point.step, point.total_steps)
        return state.get("model")

    def _refuse_changes(self, run, total, new_run):
        """A setting given for a resumed run (other than the recipe default) must be the run's own."""
        defaults = TrainConfig()
        for name in RUN_FIELDS:
            given = getattr(self.config, name)
            if given == getattr(defaults, name):
                continue
            if name == "steps":
                if given != total:
                    raise CnnctcError(f"--resume {self.resume_dir}: the run was planned for {total} steps (its "
                                      f"learning-rate schedule ends there) and --steps cannot change that; resume "
                                      f"without --steps, or train further in a new run: {new_run} --steps {given}")
            elif name == "epochs" and run.steps is not None:
                raise CnnctcError(f"--resume {self.resume_dir}: the run counts {total} steps, not epochs; "
                                  "resume without --epochs")
            elif given != getattr(run, name):
                raise CnnctcError(f"--resume {self.resume_dir}: the run has {flag(name)} {getattr(run, name)}, not "
                                  f"{given}; a resumed run keeps its settings (leave {flag(name)} out, or start "
                                  f"a new run: {new_run})")

    def _open_datasets(self):
        config = self.config
        label_filter = LabelFilter.for_alphabet(self.alphabet, config.max_length)
        preprocess = self.manifest.preprocess
        for path in self.valid_paths:  # a typo in --valid must not wait until after training
            try:
                with LmdbDataset(path, label_filter, preprocess_config=preprocess) as dataset:
                    if not len(dataset):
                        raise CnnctcError(f"--valid {path}: none of its samples fits the alphabet and length limit "
                                          f"(skipped: {counts(dataset.skipped)})")
            except CnnctcError as exc:
                raise CnnctcError(exc if str(exc).startswith("--valid") else f"--valid {exc}") from None
        try:
            self.train_set = LmdbDataset(self.train_paths, label_filter, preprocess_config=preprocess)
        except CnnctcError as exc:
            raise CnnctcError(f"--train {exc}") from None
        try:
            self._plan_steps()
        except BaseException:
            self.train_set.close()
            raise

    def _plan_steps(self):
        config, kept = self.config, len(self.train_set)
        if self.train_set.skipped:
            log.info("training data: %d kept, skipped %s", kept, counts(self.train_set.skipped))
        if kept == 0:
            raise CnnctcError(f"--train: none of its samples fits the alphabet {shown(self.alphabet)} and length limit "
                              f"(skipped: {counts(self.train_set.skipped)})")
        self.steps_per_epoch = kept // (config.batch_size * self.world)
        if self.steps_per_epoch == 0:
            raise CnnctcError(f"{kept} usable training samples are fewer than one batch ({config.batch_size} x "
                              f"{self.world} rank(s)); lower --batch-size")
        planned = config.steps or config.epochs * self.steps_per_epoch
        if self.resume is None:
            if planned > MAX_STEPS:
                raise CnnctcError(f"{config.epochs} epochs of {self.steps_per_epoch} steps exceed {MAX_STEPS} steps; "
                                  "give fewer --epochs")
            self.total_steps = planned
        else:  # resumed: the data order only continues with the same data and workers
            state = self.resume.state
            if state.get("world", 1) != self.world:
                raise CnnctcError(f"--resume {self.resume_dir}: the run was trained on {state.get('world', 1)} "
                                  f"msrun rank(s), this one has {self.world}; resume it with the same number")
            if state.get("train_samples", kept) != kept:
                raise CnnctcError(f"--resume {self.resume_dir}: the run trained on {state['train_samples']} usable "
                                  f"samples, this --train has {kept}; resume with the run's own --train")


def _new_run(point):
    """The options of a new run that starts from a run's newest checkpoint (``point``); its width and
    alphabet come from that checkpoint."""
    return f"--pretrained {point.path} --out NEW_DIR"
