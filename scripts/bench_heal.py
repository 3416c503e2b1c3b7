"""Healing throughput as a ratio against the floor: the work no healer can skip, in the same process
on the same images.

Floor (teacher cached): per batch, a student forward that hands over its block outputs (forward
hooks), the cosine loss against teacher states already in memory, backward and an Adam step, on
batches already in memory. Measured against it: StarfishHealer.heal (the reference recipe,
teacher=host), whose time also holds what the floor leaves out: its one teacher pass to fill the
cache, the data loader, masks re-applied after each step, the schedule and the progress bar.
Also: teacher=recompute against the floor plus a teacher forward per batch; and, on the same masks
and images, the reference implementation's loop (shrikboi/STARFISH recovery.py, re-implemented here
from its description: batches and fp16 dense targets cached up front, block outputs by forward hooks
on the full model, gradient hooks that zero pruned gradients, Adam with foreach=False, the gradient
norm measured every step, masks multiplied back in after every step, the loss read every step).
Each pair (floor and heal; reference loop and heal) takes turns over `--repeats` rounds: each one's fastest.
    python scripts/bench_heal.py [--model vit_fmnist] [--images 480] [--epochs 10] [--device auto]
"""

import copy

import torch
import torch.nn.functional as F

from _bench_common import arguments, best_of_interleaved, peak_memory_mb, setup
from starfish_cli.data.loader import loader
from starfish_cli.models import structure_of
from starfish_cli.healing import HEALERS
from starfish_cli.healing.base import pruned_weight_names
from starfish_cli.healing.loop import train_only
from starfish_cli.healing.states import state_alignment_loss
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime.device import autocast, resolve_precision


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

    def reference_loop() -> None:
        model = copy.deepcopy(student)
        blocks = structure_of(model).blocks
        dense = BlockOutputs(teacher)
        with torch.no_grad():  # its cache: every batch's block outputs, fp16 on the host
            cached = [[state.half().cpu() for state in dense.of(teacher, batch)] for batch in batches]
        layers = structure_of(model).prunable_layers()
        weights = train_only(model, pruned_weight_names(model))
        keep = [masks[name].to(device, torch.float32) for name in layers]
        hooks = [layers[name].weight.register_hook(lambda grad, mask=mask: grad * mask)
                 for name, mask in zip(layers, keep)]
        optimizer = torch.optim.Adam(weights, lr=6e-4, foreach=False)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(batches),
                                                               eta_min=1e-6)
        outputs = BlockOutputs(model)
        model.train()
        for _ in range(args.epochs):
            for batch, target in zip(batches, cached):
                optimizer.zero_grad(set_to_none=True)
                states = outputs.of(model, batch)
                loss = sum((1.0 - (F.normalize(s.reshape(-1, s.shape[-1]), dim=-1) * F.normalize(
                    t.to(device, s.dtype).reshape(-1, s.shape[-1]), dim=-1)).sum(-1)).mean()
                    for s, t in zip(states, target)) / len(blocks)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(weights, float("inf"))
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    for name, mask in zip(layers, keep):
                        layers[name].weight.mul_(mask)
                float(loss.item())
        for hook in hooks:
            hook.remove()
        model.eval()

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
        seconds, healed = best_of_interleaved(args.repeats, (floor_run, heal(mode)), device)
        print(f"{name:48} {images / seconds:8.1f} images/s")
        print(f"starfish heal (teacher={mode:9}) {images / healed:26.1f} images/s   "
              f"{healed / seconds:.2f}× the floor's time")
    reference, healed = best_of_interleaved(args.repeats, (reference_loop, heal("host")), device)
    print(f"reference loop (shrikboi/STARFISH recovery.py) {images / reference:10.1f} images/s")
    print(f"starfish heal (teacher=host) {images / healed:28.1f} images/s   "
          f"{reference / healed:.2f}× faster than the reference loop")
    print(f"peak memory: {peak_memory_mb(device):.0f} MB ({'CUDA allocated' if device.type == 'cuda' else 'host RSS'})")


if __name__ == "__main__":
    main()
