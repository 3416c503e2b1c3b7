"""Where and how the work runs: device choice, precision, seeding, per-stage time and memory."""

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.runtime.memory import peak_rss_mb, release_freed_memory, reset_peak_rss

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise StarfishError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StarfishError(f"device={name} but no CUDA GPU is visible: use device=cpu or device=auto")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """Compute dtype for autocast: bf16 on CUDA by default, fp32 elsewhere. Weights stay fp32."""
    if name not in PRECISIONS:
        raise StarfishError(f"precision={name!r}: choose one of {', '.join(PRECISIONS)}")
    if name == "auto":  # bf16 where the GPU has it in hardware (Ampere and later), not emulated
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if name == "bf16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast around forward passes (fp32 master weights); a no-op for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


@contextmanager
def measure(stage: str, device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    """Wall time and peak memory of one stage: `peak_memory_mb` is the device's (CUDA allocator peak on a
    GPU, the process's peak RSS on a CPU), `peak_rss_mb` always the process's peak resident set size."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    release_freed_memory()  # what earlier stages freed is not this one's peak
    per_stage = reset_peak_rss()
    started = time.perf_counter()
    yield
    rss = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda allocated"
    else:
        peak, kind = rss, "host RSS" if per_stage else "host RSS (process peak)"
    into[stage] = {"seconds": time.perf_counter() - started, "peak_memory_mb": peak, "memory_kind": kind,
                   "peak_rss_mb": rss}


def compile_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile every transformer block in place (the blocks are where the time goes, and
    compiling them one by one keeps `forward_intermediates` and the hooks working)."""
    for block in model.blocks:
        block.compile()
    return model
