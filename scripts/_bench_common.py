"""Shared set-up for the benchmarks: a model, images on the model's own preprocessing, a device."""

import argparse
import time

import timm
import torch

import starfish_cli.models  # noqa: F401  (registers vit_fmnist with timm)
from starfish_cli.data import DATASETS
from starfish_cli.data.images import DecodedImages, ImageTensors
from starfish_cli.models.vision import model_transform
from starfish_cli.runtime.device import resolve_device
from starfish_cli.runtime.memory import peak_rss_mb


class SyntheticImages(torch.utils.data.Dataset):
    """Random images at the model's input size (for models whose data is not on this machine)."""

    def __init__(self, count: int, shape: tuple[int, ...], with_labels: bool, num_classes: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn((count, *shape), generator=generator)
        self.labels = torch.randint(0, num_classes, (count,), generator=generator)
        self.with_labels = with_labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        item = (index, self.images[index])
        return (*item, int(self.labels[index])) if self.with_labels else item


def arguments(description: str, **extra) -> argparse.Namespace:
    """The shared options, plus a script's own `extra` ones with their defaults (`heads=0.5` → `--heads`)."""
    parser = argparse.ArgumentParser(description=description)
    for key, default in extra.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--model", default="vit_fmnist")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="default: true for vit_fmnist (shipped), false otherwise (no hub here)")
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def setup(args: argparse.Namespace, with_labels: bool):
    device = resolve_device(args.device)
    pretrained = args.pretrained if args.pretrained is not None else args.model == "vit_fmnist"
    model = timm.create_model(args.model, pretrained=pretrained).to(device).eval()
    if args.model == "vit_fmnist":
        split = DATASETS.build({"name": "fashion_mnist"}).load("train" if not with_labels else "test")
        split = split.select(range(args.images))
        if not with_labels:
            split = split.remove_columns("label")
        # calibration as healing reads it: decoded once (DecodedImages); evaluation images decoded per item
        kind = ImageTensors if with_labels else DecodedImages
        dataset = kind(split, model_transform(model), channels=1, with_labels=with_labels)
    else:
        config = timm.data.resolve_data_config(model=model)
        dataset = SyntheticImages(args.images, config["input_size"], with_labels, model.num_classes)
    return model, dataset, device


def peak_memory_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()


def timed(function, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def best_of(repeats: int, function, device: torch.device) -> float:
    """The fastest of `repeats` runs: the least disturbed by whatever else the machine does."""
    return min(timed(function, device) for _ in range(repeats))


def best_of_interleaved(repeats: int, functions, device: torch.device) -> list[float]:
    """Each function's fastest of `repeats` rounds, the functions taking turns within a round, so
    that a drift of the machine or the process over time favours none of them."""
    seconds = [[] for _ in functions]
    for _ in range(repeats):
        for times, function in zip(seconds, functions):
            times.append(timed(function, device))
    return [min(times) for times in seconds]
