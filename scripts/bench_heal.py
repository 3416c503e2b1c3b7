"""Healing throughput as a ratio against the floor: the work no healer can skip, in the same process
on the same images.

Floor (teacher cached): per batch, a student forward that hands over its block outputs (forward
hooks), the cosine loss against teacher states already in memory, backward and an Adam step, on
batches already in memory. Measured against it: StarfishHealer.heal (the reference recipe,
teacher=host), whose time also holds what the floor leaves out: its one teacher pass to fill the
cache, the data loader, masks re-applied after each step, the schedule and the progress bar.
Also: teacher=recompute against the floor plus a teacher forward per batch.
    python scripts/bench_heal.py [--model vit_fmnist] [--images 480] [--epochs 10] [--device auto]
"""

import copy

import torch

from _bench_common import arguments, best_of, peak_memory_mb, setup
from starfish_cli.data import loader
from starfish_cli.families import structure_of
from starfish_cli.healing import HEALERS
from starfish_cli.healing.base import pruned_weight_names, train_only
from starfish_cli.healing.states import state_alignment_loss
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime import autocast, resolve_precision


class BlockOutputs:
    """Every block's output of the last forward, by forward hooks on the blocks."""

    def __init__(self, model: torch.nn.Module):
        self.outputs: list[torch.Tensor] = []
        self.handles = [block.register_forward_hook(lambda _m, _i, out: self.outputs.append(out))
                        for block in structure_of(model).blocks]

    def of(self, model: torch.nn.Module, batch: torch.Tensor) -> list[torch.Tensor]:
        self.outputs = []
        model(batch)
        return self.outputs


def main() -> None:
    args = arguments(__doc__.splitlines()[0], epochs=10)
    teacher, dataset, device = setup(args, with_labels=False)
    precision = resolve_precision("auto", device)
    student = copy.deepcopy(teacher)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.75}).prune(student)
    batches = [images.to(device) for _, images in loader(dataset, args.batch_size)]
    images = sum(len(b) for b in batches) * args.epochs
    teacher_blocks = BlockOutputs(teacher)
    with torch.no_grad(), autocast(device, precision):
        targets = [[state.float() for state in teacher_blocks.of(teacher, batch)] for batch in batches]

    def floor(with_teacher: bool):
        def run() -> None:
            model = copy.deepcopy(student)
            student_blocks = BlockOutputs(model)
            optimizer = torch.optim.Adam(train_only(model, pruned_weight_names(model)), lr=6e-4)
            for _ in range(args.epochs):
                for batch, target in zip(batches, targets):
                    with autocast(device, precision):
                        if with_teacher:
                            with torch.no_grad():
                                target = teacher_blocks.of(teacher, batch)
                        loss = state_alignment_loss(student_blocks.of(model, batch), target)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        return run

    def heal(mode: str):
        def run() -> None:
            healer = HEALERS.build({"name": "starfish", "epochs": args.epochs, "batch_size": args.batch_size,
                                    "teacher": mode, "save_every": 0})
            healer.heal(copy.deepcopy(student), teacher, masks, dataset, device, precision)
        return run

    floor(False)()  # warm-up: allocator, kernels
    print(f"model {args.model} on {device} ({str(precision).split('.')[-1]}), {len(dataset)} images × "
          f"{args.epochs} epochs, batch {args.batch_size}")
    for name, floor_run, mode in (("floor: student fwd+bwd+Adam, targets in memory", floor(False), "host"),
                                  ("floor + a teacher forward per batch", floor(True), "recompute")):
        seconds = best_of(args.repeats, floor_run, device)
        healed = best_of(args.repeats, heal(mode), device)
        print(f"{name:48} {images / seconds:8.1f} images/s")
        print(f"starfish heal (teacher={mode:9}) {images / healed:26.1f} images/s   "
              f"{healed / seconds:.2f}× the floor's time")
    print(f"peak memory: {peak_memory_mb(device):.0f} MB ({'CUDA allocated' if device.type == 'cuda' else 'host RSS'})")


if __name__ == "__main__":
    main()
