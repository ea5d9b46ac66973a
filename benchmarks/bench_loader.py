"""Which one bounds a fine-tuning run: the input pipeline or the network's training step?

Images/s of the training loader alone (LMDB read, PNG decode, the official transform, label
encoding, batching; ``cnnctc.batches.BatchLoader`` in 1, 2, ... worker processes, and the same
work in the calling process), against images/s of the network's training step (CTC loss,
centered RMSProp, full-size network, graph mode on the CPU), measured in one run.

    python benchmarks/bench_loader.py [--samples 20000] [--batches 30] [--batch-size 192]
                                      [--workers 1 2] [--net-batch 16] [--net-steps 3]
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

import lmdb_fixture  # noqa: E402
from cnnctc.batches import BatchLoader, epoch_order  # noqa: E402
from cnnctc.data import LabelFilter, LmdbDataset  # noqa: E402


def loader_rate(dataset, order, workers):
    """(images/s once the first batch is out, seconds to the first batch, CPU ms per image in the workers)."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with BatchLoader(dataset, workers=workers) as loader:
        batches = loader.batches(order)
        next(batches)
        first = time.perf_counter()
        for _ in batches:
            pass
        done = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return (len(order) - 1) * order.shape[1] / (done - first), first - started, 1000 * cpu / order.size


def in_process_rate(dataset, order):
    """The same work in this process, one sample after the other (what a single process does)."""
    started = time.perf_counter()
    for indices in order:
        rows = [dataset[int(i)] for i in indices]
        np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), np.array([r[2] for r in rows])
    return order.size / (time.perf_counter() - started)


def network_rate(batch, steps):
    import mindspore as ms
    from mindspore import nn
    from cnnctc.loader import configure_context
    from cnnctc.network import CNNCTC
    from cnnctc.train import CTCLossCell, TrainConfig, TrainStep, lr_schedule
    configure_context("CPU")
    recipe = TrainConfig()
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((batch, 3, 32, 100)).astype(np.float32))
    targets = ms.Tensor(rng.integers(0, 36, (batch, recipe.max_length)).astype(np.int32))
    lengths = ms.Tensor(np.full(batch, 6, np.int32))
    net = CNNCTC()
    optimizer = nn.RMSProp(net.trainable_params(), learning_rate=ms.Tensor(lr_schedule(steps + 1, 5e-4, 2)),
                           decay=0.9, momentum=recipe.momentum, epsilon=1e-10, centered=True)
    step = TrainStep(CTCLossCell(net, 36), optimizer, recipe.loss_scale)
    step.set_train(True)
    step(images, targets, lengths)[0].asnumpy()  # compiles
    started = time.perf_counter()
    for _ in range(steps):
        loss, _ = step(images, targets, lengths)
    loss.asnumpy()
    return batch * steps / (time.perf_counter() - started), ms.__version__


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=192)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loader setting, interleaved; the "
                        "fastest counts (the machine is shared)")
    parser.add_argument("--net-batch", type=int, default=16)
    parser.add_argument("--net-steps", type=int, default=3)
    parser.add_argument("--no-network", action="store_true", help="measure the loader only")
    parser.add_argument("--dir", help="where to build the LMDB (default: a temporary folder)")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(dir=args.dir)
    try:
        path = os.path.join(folder, "train.lmdb")
        lmdb_fixture.build(path, args.samples)
        dataset = LmdbDataset(path, LabelFilter.for_alphabet(lmdb_fixture.ALPHABET))
        steps = min(args.batches, len(dataset) // args.batch_size)
        order = epoch_order(len(dataset), seed=1, epoch=0, start_step=0, steps_per_epoch=steps,
                            batch_size=args.batch_size, rank=0, world=1)
        load = os.getloadavg()[0]
        rows = [("loader in the calling process (no workers)", in_process_rate(dataset, order[:max(2, steps // 3)]),
                 None, None)]
        best = {}
        for _ in range(args.repeats):
            for workers in args.workers:
                result = loader_rate(dataset, order, workers)
                if workers not in best or result[0] > best[workers][0]:
                    best[workers] = result
        rows += [(f"loader, --workers {w}", *best[w]) for w in args.workers]
        dataset.close()
        network = None if args.no_network else network_rate(args.net_batch, args.net_steps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}"
          + (f"; MindSpore {network[1]}" if network else "") + f"; load average {load:.1f} at the start")
    print(f"{args.samples:,} samples, {steps} batches of {args.batch_size}; fastest of {args.repeats} runs each")
    print()
    print("| pipeline | images/s | × 1 worker | × no workers | CPU ms per image (workers) | first batch after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    one = next((row[1] for row in rows if row[0].endswith("--workers 1")), None)
    alone = rows[0][1]
    for name, rate, startup, cpu in rows:
        ratio = f"{rate / one:.2f}×" if one else "-"
        print(f"| {name} | {rate:.0f} | {ratio} | {rate / alone:.2f}× | {'-' if cpu is None else f'{cpu:.2f}'} | "
              f"{'-' if startup is None else f'{startup:.2f} s'} |")
    if network:
        print(f"| network training step, full size, batch {args.net_batch} | {network[0]:.1f} | - | - | - | - |")


if __name__ == "__main__":
    main()
