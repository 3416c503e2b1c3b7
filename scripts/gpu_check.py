"""The CUDA path on a GPU machine, with no pretrained weights: random-init DeiT-B at 224×224.

Prunes (wanda, sparsegpt, 2:4), heals a few steps in bf16 and in fp32, evaluates on synthetic
batches, tries PyTorch's 2:4 semi-structured kernels, and writes every figure to OUT/gpu_check.json.
    python scripts/gpu_check.py OUT [--device cuda] [--model deit_base_patch16_224] [--images 256]
(`--device cpu --model vit_tiny_patch16_224 --images 8` is a quick smoke run of the same code.)
"""

import argparse
import copy
import json
import time
from pathlib import Path

import timm
import torch

import starfish_cli
import starfish_cli.models  # noqa: F401  (registers vit_fmnist with timm)
from starfish_cli.evaluation.compare import evaluate
from starfish_cli.healing import HEALERS
from starfish_cli.models import structure_of
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime.memory import peak_rss_mb


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, count: int, labels: bool):
        self.images = torch.randn(count, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        self.labels = labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return (i, self.images[i], i % 1000) if self.labels else (i, self.images[i])


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function):
    synchronize()
    started = time.perf_counter()
    result = function()
    synchronize()
    return result, time.perf_counter() - started


def peak_gb(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_mb() / 1024


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="deit_base_patch16_224")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        assert torch.cuda.is_available(), "no CUDA GPU visible"
    figures = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "model": args.model, "torch": torch.__version__, "starfish": starfish_cli.__version__}
    dense = timm.create_model(args.model, pretrained=False).to(device).eval()
    batch = min(32, args.images)
    calibration = [torch.randn(batch, 3, 224, 224, device=device) for _ in range(max(1, args.images // 64))]
    for name, pattern in (("wanda", "unstructured"), ("sparsegpt", "unstructured"), ("wanda", "2:4")):
        model = copy.deepcopy(dense)
        reset_peak(device)
        _, seconds = timed(lambda: PRUNERS.build({"name": name, "sparsity": 0.5, "pattern": pattern}).prune(model, calibration))
        figures[f"prune_{name}_{pattern}_seconds"] = seconds
        figures[f"prune_{name}_{pattern}_peak_gb"] = peak_gb(device)
    student = copy.deepcopy(dense)
    masks = PRUNERS.build({"name": "wanda", "sparsity": 0.5}).prune(student, calibration)
    heal_images = Synthetic(args.images, labels=False)
    warm_up_images = torch.utils.data.Subset(heal_images, range(min(batch, len(heal_images))))
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        healer = HEALERS.build({"name": "starfish", "epochs": 1, "batch_size": batch, "teacher": "recompute"})
        # a first step pays for CUDA context, kernel selection and allocator growth: not the dtype's speed
        healer.heal(copy.deepcopy(student), dense, masks, warm_up_images, device, dtype)
        reset_peak(device)
        _, seconds = timed(lambda: healer.heal(copy.deepcopy(student), dense, masks, heal_images, device, dtype))
        figures[f"heal_{label}_images_per_second"] = len(heal_images) / seconds
        figures[f"heal_{label}_peak_gb"] = peak_gb(device)
    figures["heal_bf16_over_fp32_speed"] = figures["heal_bf16_images_per_second"] / figures["heal_fp32_images_per_second"]
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        evaluate({"dense": dense}, Synthetic(batch, labels=True), device, batch_size=batch, precision=dtype)  # warm-up
        results, seconds = timed(lambda: evaluate({"dense": dense, "pruned": student},
                                                  Synthetic(4 * args.images, labels=True), device,
                                                  batch_size=min(256, 4 * args.images), precision=dtype))
        figures[f"eval_{label}_dense_images_per_second"] = results["models"]["dense"]["images_per_second"]
    figures["eval_bf16_over_fp32_speed"] = (figures["eval_bf16_dense_images_per_second"]
                                            / figures["eval_fp32_dense_images_per_second"])
    if device.type == "cuda":
        figures.update(semi_structured_speedup(dense, device))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def semi_structured_speedup(dense, device) -> dict:
    """fp16 inference with 2:4 weights as dense tensors vs torch.sparse.to_sparse_semi_structured."""
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError as error:
        return {"semi_structured": f"unavailable: {error}"}
    model = copy.deepcopy(dense).half()
    PRUNERS.build({"name": "magnitude", "pattern": "2:4"}).prune(model)
    x = torch.randn(256, 3, 224, 224, device=device, dtype=torch.float16)

    @torch.no_grad()
    def run(m):
        for _ in range(3):
            m(x)
        return timed(lambda: [m(x) for _ in range(10)])[1]

    dense_seconds = run(model)
    try:
        for layer in structure_of(model).prunable_layers().values():
            layer.weight = torch.nn.Parameter(to_sparse_semi_structured(layer.weight))
        sparse_seconds = run(model)
    except Exception as error:  # kernels need Ampere+ and supported shapes
        return {"semi_structured": f"failed: {str(error).splitlines()[0][:200]}"}
    return {"semi_structured_2_4_speedup": dense_seconds / sparse_seconds}


if __name__ == "__main__":
    main()
