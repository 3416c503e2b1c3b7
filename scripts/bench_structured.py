"""Inference throughput of a structurally pruned model against its dense original: same process,
same images, repeats interleaved (dense, pruned, dense, …) so both see the same machine load.

    python scripts/bench_structured.py [--heads 0.5] [--mlp 0.5] [--images 2048] [--batch-size 256] [--threads N]
"""

import copy
import os
import statistics
import time

import torch

from _bench_common import arguments, peak_memory_mb, setup, timed
from starfish_cli.data.loader import loader
from starfish_cli.models import structure_of
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime.device import autocast, resolve_precision


def main() -> None:
    args = arguments(__doc__.splitlines()[0], heads=0.5, mlp=0.5, criterion="fluctuation", calibration=240, threads=0)
    if args.threads:  # 0: torch's default (one per core)
        torch.set_num_threads(args.threads)
    dense, dataset, device = setup(args, with_labels=False)
    precision = resolve_precision("auto", device)
    batch_size = max(args.batch_size, 256)
    batches = [images.to(device) for _, images in loader(dataset, batch_size)]
    calibration = [images.to(device) for _, images in loader(torch.utils.data.Subset(dataset, range(args.calibration)),
                                                             32)]
    pruner = PRUNERS.build({"name": "structured", "heads": args.heads, "mlp": args.mlp, "criterion": args.criterion})
    pruned = copy.deepcopy(dense)
    pruner.prune(pruned, calibration)

    def forward(model):
        @torch.no_grad()
        def run() -> None:
            for batch in batches:
                with autocast(device, precision):
                    model(batch)
        return run

    models = {"dense": forward(dense), "pruned": forward(pruned)}
    for run in models.values():  # warm-up
        run()
    seconds = {name: [] for name in models}
    cpu_seconds = {name: [] for name in models}  # the process's CPU time: what waiting for a busy core does not add
    for _ in range(args.repeats):
        for name, run in models.items():
            started = time.process_time()
            seconds[name].append(timed(run, device))
            cpu_seconds[name].append(time.process_time() - started)
    images = len(batches) * batch_size if len(dataset) % batch_size == 0 else len(dataset)
    sizes = {name: sum(p.numel() for p in model.parameters()) for name, model in (("dense", dense), ("pruned", pruned))}
    print(f"model {args.model} on {device} ({str(precision).split('.')[-1]}, {torch.get_num_threads()} threads), "
          f"{images} images, batch {batch_size}, {args.repeats} interleaved repeats, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"pruned: heads {args.heads}, mlp {args.mlp}, criterion {args.criterion}; "
          f"{sizes['pruned']:,} of {sizes['dense']:,} parameters; {structure_of(pruned).block_sizes()['blocks.0']} in blocks.0")
    for name in models:
        print(f"{name:7s} best {images / min(seconds[name]):8.1f} images/s   median {images / statistics.median(seconds[name]):8.1f}")
    ratios = [d / p for d, p in zip(seconds["dense"], seconds["pruned"])]
    print(f"speed-up (dense time ÷ pruned time): best-of {min(seconds['dense']) / min(seconds['pruned']):.2f}×, "
          f"median of pairs {statistics.median(ratios):.2f}×")
    print(f"CPU time per image: dense {min(cpu_seconds['dense']) / images * 1e3:.2f} ms, pruned "
          f"{min(cpu_seconds['pruned']) / images * 1e3:.2f} ms: {min(cpu_seconds['dense']) / min(cpu_seconds['pruned']):.2f}×")
    print(f"peak memory: {peak_memory_mb(device):.0f} MB")


if __name__ == "__main__":
    main()
