"""What a fine-tuning run trains with, built from its checked plan: the network with its starting
weights, the loss, the optimizer and the training cell, the batch loader, and the reader that
validates with the network being trained. A resumed run's weights and optimizer state go into them
before the first step."""
import dataclasses
import logging

from .._mindspore import mindspore as ms
from mindspore import nn

from ..batches import BatchLoader, default_workers
from ..checkpoint import load_weights
from ..errors import CheckpointError, CnnctcError
from ..recognizer import Recognizer
from ..registry import build_network
from .plan import cluster_size
from .pretrained import load_pretrained
from .recipe import CTCLossCell, TrainStep, lr_schedule
from .store import first_non_finite

__all__ = ["BuiltRun", "build_run", "load_resume_point"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BuiltRun:
    """What :func:`build_run` made for a run."""
    manifest: object     # the plan's, with the run's alphabet: what the trained weights are read with
    net: object
    amp_level: str
    warmup: int          # steps of linear warm-up, as applied
    schedule: object     # the learning rate of every step
    train_cell: object
    loader: object
    reader: object       # reads the validation sets with ``net``
    trained_on: dict     # what the weights are trained on, for their lineage (the step is added when saved)


def build_run(plan, device):
    """The network (with the pretrained weights), the loss, the optimizer and the training cell of a
    checked ``plan`` on ``device``, in the joined cluster the plan names."""
    config, alphabet = plan.config, plan.alphabet
    ms.set_seed(config.seed)
    if plan.world > 1:
        joined = cluster_size()
        if joined != (plan.rank, plan.world):
            seen = "no cluster" if joined is None else f"rank {joined[0]} of {joined[1]}"
            raise CnnctcError(f"rank {plan.rank} of {plan.world} ranks needs a joined cluster of that size "
                              f"(run under msrun); this process has {seen}")
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    manifest = plan.manifest.replace(alphabet=alphabet, lowercase_labels=alphabet == alphabet.lower())
    try:
        net = build_network(manifest, output_channel=config.output_channel)
    except (ValueError, TypeError) as exc:
        raise CnnctcError(f"cannot build the network: {exc}") from None
    if plan.pretrained is not None:
        load_pretrained(net, plan.pretrained, alphabet)
        plan.pretrained = None  # the weights are in the network now
    elif plan.resume is None:
        log.info("starting from random weights")
    amp_level = config.amp_level or ("O0" if device == "CPU" else "O2")
    if amp_level != "O0":
        ms.amp.auto_mixed_precision(net, amp_level)
    loss_net = CTCLossCell(net, blank=len(alphabet))
    warmup = min(config.warmup_steps, max(1, plan.total_steps // 10))
    schedule = lr_schedule(plan.total_steps, config.lr, warmup, config.warmup_start)
    optimizer = nn.RMSProp(net.trainable_params(), learning_rate=ms.Tensor(schedule), decay=0.9,
                           momentum=config.momentum, epsilon=1e-10, centered=True)
    train_cell = TrainStep(loss_net, optimizer, config.loss_scale, plan.world)
    loader = BatchLoader(plan.train_set, config.workers or default_workers(plan.world))
    reader = Recognizer(network=net, manifest=manifest, batch_size=min(config.batch_size, 64))
    trained_on = plan.trained_on()
    trained_on["recipe"].update(warmup_steps=warmup, amp_level=amp_level)  # as applied
    return BuiltRun(manifest, net, amp_level, warmup, schedule, train_cell, loader, reader, trained_on)


def load_resume_point(built, point):
    """Load the resumed run's weights and optimizer state (``point``; nothing to do for a new run),
    refuse starting weights that are not finite, and put the training cell in training mode."""
    net = built.net
    if point is not None and point.contents is not None:
        load_weights(net, point.contents, source=str(point.path))
        names = {p.name for p in net.get_parameters()}
        optimizer_state = {k: v for k, v in point.contents.items() if not isinstance(v, str) and k not in names}
        # strict_load: a lax load matches names by suffix and would pour moment.X into X.
        ms.load_param_into_net(built.train_cell, optimizer_state, strict_load=True)
        point.contents = None  # loaded; the memory goes back
    bad = first_non_finite((p.name, p) for p in net.get_parameters())
    if bad is not None:
        raise CheckpointError(f"the starting weights hold NaN or infinite values ({bad})")
    built.train_cell.set_train(True)
