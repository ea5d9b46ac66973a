"""The finetune command, alone under msrun or data-parallel under it."""
import argparse
import contextlib
import logging
import os

from .._checks import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LR, MAX_STEPS, MIN_LR, output_channel_problem
from ..errors import CnnctcError, shown
from ._args import Command, alphabet_arg, device_arg, finite_positive_float, int_at_least, positive_int, seed_arg


def _channel_width(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {shown(text)}") from None
    problem = output_channel_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _learning_rate(text):
    value = finite_positive_float(text)
    if not MIN_LR <= value <= MAX_LR:
        raise argparse.ArgumentTypeError(f"must be from {MIN_LR:g} to {MAX_LR:g} (the schedule is float32), got {text}")
    return value


def _workers_arg(text):
    from ..batches import MAX_WORKERS
    value = positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_WORKERS}, got {value}")
    return value


def finetune_arguments(p):
    p.add_argument("--train", nargs="+", required=True, metavar="LMDB", help="training LMDB datasets")
    p.add_argument("--valid", nargs="+", metavar="LMDB", help="validation LMDB datasets (accuracy per epoch)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the checkpoints (created if needed; a "
                   "folder holding another run's checkpoints is refused unless it is the --resume folder; other "
                   "files in it are left alone)")
    p.add_argument("--pretrained", default="hub", metavar="hub|UID|PATH|none",
                   help="start from the selected model's hub checkpoint (default), another registered model's "
                   "(e.g. mindspore/1.8/cnnctc_mjstiiit, or the bundled cnnctc/synth-scene and cnnctc/mini-synth), "
                   "a checkpoint file, or random weights; the width and alphabet come from these weights")
    p.add_argument("--alphabet", type=alphabet_arg(" to read, or leave it out for the pretrained model's alphabet"),
                   help="symbols to read (default: the pretrained checkpoint's); a "
                   "new alphabet gets a new head, the backbone still comes from the pretrained weights")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--epochs", type=int_at_least(1, MAX_EPOCHS), default=3, help="passes over the data (default 3)")
    group.add_argument("--steps", type=int_at_least(1, MAX_STEPS), help="optimizer steps (instead of --epochs)")
    p.add_argument("--batch-size", type=int_at_least(1, MAX_BATCH_SIZE, "a larger batch does not fit in memory"),
                   default=192, help="images per step on each rank (msrun process; default 192)")
    p.add_argument("--lr", type=_learning_rate, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--save-every", type=int_at_least(1, MAX_STEPS), default=1000, help="steps between checkpoints (default 1000)")
    p.add_argument("--resume", metavar="DIR", help="continue the unfinished run whose checkpoints are in DIR, with "
                   "its own settings (--steps, --lr, ... may be repeated but not changed; to train a finished run "
                   "further, start a new run with --pretrained DIR/cnnctc-<step>.ckpt)")
    p.add_argument("--output-channel", type=_channel_width, metavar="N",
                   help="network width, a multiple of 16 up to 1024 (default: the --pretrained weights' width; from "
                   "random weights 512, the published one); a width other than the pretrained weights' is an error")
    p.add_argument("--seed", type=seed_arg, default=1, help="seed of the initial weights and data order (default 1)")
    p.add_argument("--log-every", type=int_at_least(1, MAX_STEPS), default=50, help="steps between log lines (default 50)")
    p.add_argument("--workers", type=_workers_arg, metavar="N", help="loader workers: processes that read, decode "
                   "and batch the training images, on each rank (default: the cores, divided by the number of msrun "
                   "ranks; at most 64)")
    device_arg(p)


def _msrun_workers():
    """The number of workers when msrun started this process (a worker or its scheduler) with more
    than one, else None."""
    from ..ranks.launch import msrun_world
    workers = msrun_world()
    return workers if workers and workers > 1 else None


def _join_cluster():
    """Join msrun's cluster: (rank, world) for a worker, None for msrun's scheduler process (its
    init() serves the cluster until the workers are done)."""
    from mindspore.communication import get_group_size, get_rank, init
    try:
        init()
    except RuntimeError as exc:
        raise CnnctcError(f"cannot join the msrun cluster ({str(exc).strip().splitlines()[0]})") from None
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return None
    return get_rank(), get_group_size()


def _say_how_to_resume(args, trainer):
    """After Ctrl-C (or SIGTERM): where the run stopped and the option that continues it."""
    from ..training.store import step_checkpoints
    if trainer.rank not in (None, 0):
        return
    with contextlib.suppress(OSError):
        saved = step_checkpoints(args.out)
        if saved:
            logging.getLogger("cnnctc").info("the newest checkpoint is %s; run the same command with --resume %s "
                                             "to continue from it", saved[-1], args.out)


def finetune(args):
    from ..training import TrainConfig, Trainer
    config = TrainConfig(alphabet=args.alphabet, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, save_every=args.save_every, output_channel=args.output_channel,
                         seed=args.seed, log_every=args.log_every, workers=args.workers)
    config.check()
    workers = _msrun_workers()
    if workers is None and os.environ.get("MS_ROLE") == "MS_SCHED":
        return 0   # msrun's scheduler of a single worker: that worker trains, nothing is served
    trainer = Trainer(args.train, args.valid, args.out, pretrained=args.pretrained, config=config,
                      resume=args.resume, manifest=getattr(args, "manifest", None), model=getattr(args, "model", None),
                      device_target=args.device_target, rank=0 if workers else None, world=workers)
    if workers:
        from ..loader import configure_context
        configure_context(args.device_target)  # before init(): MindSpore fixes the device when it joins
        # Every process, msrun's scheduler too, checks the settings before the cluster forms, so a bad
        # one ends the whole job at once instead of leaving the scheduler waiting for its workers.
        trainer.check()
        cluster = _join_cluster()
        if cluster is None:  # the scheduler: the workers did the training
            return 0
        trainer.set_rank(*cluster)
    try:
        result = trainer.run()
    except KeyboardInterrupt:
        _say_how_to_resume(args, trainer)
        raise
    print(f"last checkpoint: {result.last_checkpoint} (step {result.steps})")
    if result.best_accuracy >= 0:
        print(f"best checkpoint: {result.best_checkpoint} (validation accuracy {result.best_accuracy:.2f}%)")
    return 0


COMMANDS = [
    Command("finetune", "train a model on your own LMDB datasets (make them with render or make-lmdb): from the hub "
            "weights (default), another registered model such as the bundled cnnctc/synth-scene, a checkpoint of "
            "yours, or random weights; with your own alphabet too (a new head, the same backbone). Official recipe: "
            "centered RMSProp, warm-up then cosine, loss scale 8096; under msrun, data-parallel over its ranks. Every "
            "setting and path is checked before training starts; a run whose loss or weights become NaN stops with "
            "its last good checkpoint kept",
            finetune_arguments, finetune,
            ("cnnctc finetune --train data/train.lmdb --valid data/valid.lmdb --out run",
             "cnnctc finetune --train mine.lmdb --out run --pretrained cnnctc/synth-scene --steps 300 --batch-size 32")),
]
