"""Train the embedded reference model (`vit_fmnist`) on Fashion-MNIST and ship it as safetensors.

Deterministic and seeded: the same seed on the same machine gives the same weights.
    python scripts/train_reference.py --epochs 12 --out starfish_cli/assets/vit_fmnist.safetensors
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import starfish_cli
import starfish_cli.models  # noqa: F401  (registers vit_fmnist with timm)
from starfish_cli.data import fashion_mnist
from starfish_cli.models.vit_fmnist import ASSET_PATH, FASHION_MNIST_MEAN, FASHION_MNIST_STD


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float().div(255).unsqueeze(1) - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]


def augment(batch: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random crop after zero-padding (in normalised units)."""
    n, _, h, w = batch.shape
    flip = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    background = -FASHION_MNIST_MEAN[0] / FASHION_MNIST_STD[0]
    padded = F.pad(batch, (pad, pad, pad, pad), value=background)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, 1, h, w + 2 * pad)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, 1, h, w)
    return padded.gather(2, rows).gather(3, cols)


@torch.no_grad()
def evaluate(model, images, labels, batch_size=500) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        correct += (logits.argmax(-1) == labels[start:start + batch_size]).sum().item()
    return 100.0 * correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=fashion_mnist.SYSTEM_DIR)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these weights (safetensors) instead of a random init")
    parser.add_argument("--out", type=Path, default=ASSET_PATH)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(args.seed)

    train_x, train_y = fashion_mnist.load_idx_arrays(args.data_dir, "train")
    test_x, test_y = fashion_mnist.load_idx_arrays(args.data_dir, "test")
    train_x, test_x = normalise(torch.from_numpy(train_x.copy())), normalise(torch.from_numpy(test_x.copy()))
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)

    model = timm.create_model("vit_fmnist", pretrained=False)
    if args.init is not None:
        model.load_state_dict(load_file(str(args.init)))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total_steps, warmup_steps = args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        running = 0.0
        for start in range(0, len(order), args.batch_size):
            index = order[start:start + args.batch_size]
            inputs = augment(train_x[index], generator)
            loss = F.cross_entropy(model(inputs), train_y[index], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(index)
        accuracy = evaluate(model, test_x, test_y)
        print(f"epoch {epoch + 1}/{args.epochs}  train loss {running / len(train_x):.4f}  "
              f"test top-1 {accuracy:.2f}%  ({time.time() - started:.0f}s)", flush=True)

    metadata = {
        "model": "vit_fmnist",
        "test_top1": f"{accuracy:.2f}",
        "epochs": str(args.epochs),
        "seed": str(args.seed),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "timm": timm.__version__,
        "torch": torch.__version__,
        "starfish": starfish_cli.__version__,
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB), test top-1 {accuracy:.2f}%")


if __name__ == "__main__":
    main()
