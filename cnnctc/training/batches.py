"""Training batches: the seeded per-epoch order, each worker's share, and corrupt images replaced.

A resumed run continues at the same place in the same order; see :func:`_epoch_batches`.
"""
import logging

import numpy as np

from .._mindspore import mindspore  # noqa: F401  (the checked import first)
from mindspore import dataset as msds

from ..errors import CnnctcError
from ..transforms import ImageError

log = logging.getLogger(__name__)


class _TrainSource:
    """A dataset view for GeneratorDataset that replaces a corrupt image by the next readable one."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.corrupt = 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        for offset in range(len(self.dataset)):
            try:
                return self.dataset[(index + offset) % len(self.dataset)]
            except ImageError as exc:
                self.corrupt += 1
                log.warning("skipping a corrupt training image (%s)", exc)
        raise CnnctcError("no readable image in the training data")


def _epoch_batches(source, *, seed, epoch, start_step, steps_per_epoch, batch_size, rank, world):
    """This worker's batches of one epoch from ``start_step`` on, as a MindSpore dataset.

    The epoch's order is a permutation seeded by (seed, epoch), so a resumed run continues at
    the same place; step k of the epoch gives worker r rows [(k * world + r) * batch_size ...].
    """
    if not 0 <= start_step < steps_per_epoch:  # an empty sampler crashes MindSpore's iterator
        raise ValueError(f"start_step {start_step} is outside the epoch's {steps_per_epoch} steps")
    order = np.random.default_rng(seed + epoch).permutation(len(source))
    usable = order[:steps_per_epoch * world * batch_size].reshape(steps_per_epoch, world, batch_size)
    indices = usable[start_step:, rank, :].reshape(-1).tolist()
    dataset = msds.GeneratorDataset(source, column_names=["image", "target", "length"], sampler=indices,
                                    shuffle=False, num_parallel_workers=1, python_multiprocessing=False)
    return dataset.batch(batch_size, drop_remainder=True)
