"""Healing throughput as a ratio against the unavoidable work, in the same process on the same images.

Baseline: per batch, a teacher forward (no grad) plus a student forward + backward + Adam step,
on batches already in memory. Measured: StarfishHealer.heal (the reference recipe) with the
teacher recomputed each step (the same work as the baseline) and with cached teacher states.
    python scripts/bench_heal.py [--model vit_fmnist] [--images 480] [--device auto]
"""

import copy

import torch

from _bench_common import arguments, best_of, peak_memory_mb, setup
from starfish_cli.data import loader
from starfish_cli.healing import HEALERS
from starfish_cli.healing.base import pruned_weight_names, train_only
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime import autocast, resolve_precision


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    teacher, dataset, device = setup(args, with_labels=False)
    precision = resolve_precision("auto", device)
    student = copy.deepcopy(teacher)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.75}).prune(student)
    batches = [images.to(device) for _, images in loader(dataset, args.batch_size)]
    images = sum(len(b) for b in batches)

    def bare() -> None:
        model = copy.deepcopy(student)
        optimizer = torch.optim.Adam(train_only(model, pruned_weight_names(model)), lr=6e-4)
        for batch in batches:
            with autocast(device, precision):
                with torch.no_grad():
                    teacher(batch)
                loss = model(batch).float().pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def heal(mode: str):
        def run() -> None:
            healer = HEALERS.build({"name": "starfish", "epochs": 1, "batch_size": args.batch_size, "teacher": mode})
            healer.heal(copy.deepcopy(student), teacher, masks, dataset, device, precision)
        return run

    bare()  # warm-up: allocator, kernels, data decoding caches
    baseline = best_of(args.repeats, bare, device)
    print(f"model {args.model} on {device} ({str(precision).split('.')[-1]}), {images} images, batch {args.batch_size}")
    print(f"bare student fwd+bwd+step + teacher fwd: {images / baseline:8.1f} images/s")
    for mode in ("recompute", "host"):
        seconds = best_of(args.repeats, heal(mode), device)
        print(f"starfish heal (teacher={mode:9}):     {images / seconds:8.1f} images/s   "
              f"cost ratio {seconds / baseline:.2f}× the bare step")
    print(f"peak memory: {peak_memory_mb(device):.0f} MB ({'CUDA allocated' if device.type == 'cuda' else 'host RSS'})")


if __name__ == "__main__":
    main()
