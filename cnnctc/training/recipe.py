"""The official recipe's parts (SPEC section 4): the learning-rate schedule, the CTC loss and one step.

CTC loss over all 26 columns, centered RMSProp (momentum 0.8) built by the loop, a fixed loss
scale of 8096, linear warm-up from 1/16 of the base rate then half-cosine to 0. With several
workers the gradients (and the loss) are averaged.
"""
import numpy as np

from .._mindspore import mindspore as ms
from mindspore import nn, ops

__all__ = ["lr_schedule", "CTCLossCell", "TrainStep"]


def lr_schedule(total_steps, base_lr, warmup_steps, warmup_start=0.0625):
    """Learning rate per step: linear warm-up from ``warmup_start * base_lr``, then half-cosine to 0."""
    steps = np.arange(total_steps, dtype=np.float64)
    warm = max(0, min(warmup_steps, total_steps))
    lr = np.empty(total_steps, np.float64)
    if warm:
        lr[:warm] = base_lr * (warmup_start + (1 - warmup_start) * steps[:warm] / warm)
    rest = total_steps - warm
    if rest:
        lr[warm:] = base_lr * 0.5 * (1 + np.cos(np.pi * (steps[warm:] - warm) / rest))
    return lr.astype(np.float32)


class CTCLossCell(nn.Cell):
    """Mean over the batch of the CTC loss of (B, T, C) logits; the blank is the last class."""

    def __init__(self, network, blank):
        super().__init__(auto_prefix=False)  # keep the network's parameter names official
        self.network = network
        self.ctc = nn.CTCLoss(blank=blank, reduction="none")

    def construct(self, images, targets, lengths):
        logits = self.network(images)
        log_probs = ops.log_softmax(ops.transpose(logits, (1, 0, 2)).astype(ms.float32), -1)
        input_lengths = ops.fill(ms.int32, (log_probs.shape[1],), log_probs.shape[0])
        return self.ctc(log_probs, targets, input_lengths, lengths).mean()


class TrainStep(nn.Cell):
    """One optimizer step with a fixed loss scale; a step whose gradients overflow is skipped.

    Returns (loss, overflow). With several workers the gradients are averaged and so is the
    loss, so every worker sees the same value (and stops on the same step if it is not finite).
    (MindSpore's TrainOneStepWithLossScaleCell reads Ascend-only float status on CPU in 2.8.)
    """

    def __init__(self, loss_net, optimizer, loss_scale, world=1):
        super().__init__(auto_prefix=False)
        self.network = loss_net
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.scale = ms.Tensor(np.float32(loss_scale))
        self.reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=world) if world > 1 else None
        self.loss_sum = ops.AllReduce() if world > 1 else None
        self.world = world

    def construct(self, images, targets, lengths):
        loss = self.network(images, targets, lengths)
        sens = ops.fill(loss.dtype, loss.shape, self.scale)
        grads = self.grad(self.network, self.weights)(images, targets, lengths, sens)
        if self.reducer is not None:
            grads = self.reducer(grads)
            loss = self.loss_sum(loss) / self.world
        grads = tuple(g / self.scale.astype(g.dtype) for g in grads)
        finite = ms.amp.all_finite(grads)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
        return loss, ops.logical_not(finite)
