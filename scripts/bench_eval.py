"""Evaluation throughput as a ratio against a bare timm inference loop, same process, same images.

    python scripts/bench_eval.py [--model vit_fmnist] [--images 2000] [--device auto]
"""

import torch

from _bench_common import arguments, best_of, peak_memory_mb, setup
from starfish_cli.data.loader import loader
from starfish_cli.evaluation.compare import evaluate
from starfish_cli.runtime.device import autocast, resolve_precision


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    model, dataset, device = setup(args, with_labels=True)
    precision = resolve_precision("auto", device)
    batch_size = max(args.batch_size, 256)
    batches = [images.to(device) for _, images, _ in loader(dataset, batch_size)]

    @torch.no_grad()
    def bare() -> None:
        for batch in batches:
            with autocast(device, precision):
                model(batch)

    def ours() -> None:
        evaluate({"dense": model}, dataset, device, batch_size=batch_size, precision=precision)

    bare()
    baseline = best_of(args.repeats, bare, device)
    measured = best_of(args.repeats, ours, device)
    images = len(dataset)
    print(f"model {args.model} on {device} ({str(precision).split('.')[-1]}), {images} images, batch {batch_size}")
    print(f"bare timm inference loop: {images / baseline:8.1f} images/s")
    print(f"starfish evaluate:        {images / measured:8.1f} images/s   cost ratio {measured / baseline:.2f}×")
    print(f"peak memory: {peak_memory_mb(device):.0f} MB")


if __name__ == "__main__":
    main()
