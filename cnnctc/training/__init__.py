"""Fine-tune CNN-CTC with the official recipe, from the hub weights, on one machine or several.

Recipe (SPEC section 4): CTC loss over all 26 columns, centered RMSProp (momentum 0.8), a fixed
loss scale of 8096, linear warm-up from 1/16 of the base rate then half-cosine to 0, mixed
precision O2 where the device supports it. Data parallel under ``msrun``: each worker reads its
share of every global batch, gradients are averaged, rank 0 alone writes checkpoints.

The rooms: :mod:`.config` (the settings and their bounds), :mod:`.plan` (every setting and
path checked before anything is built), :mod:`.pretrained` (the starting weights),
:mod:`cnnctc.batches` (the seeded data order and the loading workers), :mod:`.recipe` (schedule, loss, one step),
:mod:`.store` (the locked run folder, saving, keep-two, the resume point), :mod:`.build` (the network,
optimizer and loader a run trains with), :mod:`.progress` (where a run stands, and what its checkpoints
carry), :mod:`.steps` (the step loop), :mod:`.saving` (validation and checkpoints) and :mod:`.loop`
(:class:`Trainer`, which runs them in named steps). :func:`finetune` is the one-call form.
Joining an ``msrun`` cluster is the caller's job (the CLI does it); the trainer is given its
rank and the world size.
"""
from .config import (MAX_BATCH_SIZE, MAX_EPOCHS, MAX_OUTPUT_CHANNEL, MAX_SKIPPED_STEPS, MAX_STEPS, DivergenceError,
                     TrainConfig, check_alphabet)
from .loop import FinetuneResult, Trainer
from .pretrained import init_from_pretrained, resolve_pretrained
from .recipe import CTCLossCell, TrainStep, lr_schedule
from .store import TRAIN_STATE_KEY, latest_checkpoint, step_checkpoints

__all__ = ["TrainConfig", "Trainer", "FinetuneResult", "DivergenceError", "finetune", "init_from_pretrained",
           "resolve_pretrained", "lr_schedule", "CTCLossCell", "TrainStep", "latest_checkpoint", "step_checkpoints",
           "check_alphabet", "TRAIN_STATE_KEY", "MAX_STEPS", "MAX_BATCH_SIZE", "MAX_EPOCHS", "MAX_OUTPUT_CHANNEL",
           "MAX_SKIPPED_STEPS"]


def finetune(train, valid, out_dir, *, pretrained="hub", config=None, resume=None, manifest=None, model=None,
             device_target=None, on_step=None, rank=None, world=None):
    """Fine-tune on LMDB datasets ``train`` (a path or a list) and validate on ``valid``.

    ``pretrained``: "hub" (the asset of ``model``, a registered uid, or of ``manifest``), another
    registered uid, a checkpoint path, or None. ``resume``: the directory of an earlier run, whose
    weights, optimizer state, step and data position continue from its newest checkpoint with
    the run's own settings (a setting in ``config`` that differs from both the recipe default and
    the run's is refused, as is resuming a finished run). ``rank``/``world``: this worker in a
    joined msrun cluster (default: the joined cluster, else a single process).

    Every setting and path is checked before the network is built; a loss or weights that
    become NaN or infinite stop the run with :class:`DivergenceError`, and no checkpoint is
    written with them. ``out_dir`` is locked for the whole run: a second run into it is refused.
    Checkpoints (hub format plus the alphabet, the run state and the lineage) go to ``out_dir``:
    ``cnnctc-<step>.ckpt`` every ``save_every`` steps and at the end, and ``best.ckpt`` for the
    best validation accuracy. Returns a :class:`FinetuneResult`.
    """
    return Trainer(train, valid, out_dir, pretrained=pretrained, config=config, resume=resume, manifest=manifest,
                   model=model, device_target=device_target, on_step=on_step, rank=rank, world=world).run()
