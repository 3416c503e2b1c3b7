"""torchrun with 2 CPU processes (gloo) gives the same masks and, within a small tolerance, the same accuracy."""

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import SHRUNK, needs_fmnist, read_json, run_cli
from starfish_cli.artifacts.checkpoint import load_checkpoint

pytestmark = [needs_fmnist, pytest.mark.slow]  # the installed `starfish` in subprocesses


def torchrun(*args, cwd, port, stage="run"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
         "-m", "starfish_cli", stage, *SHRUNK, "device=cpu", *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_default_backend_sends_host_tensors_through_gloo_next_to_nccl():
    from starfish_cli.runtime.distributed import backend_for

    assert backend_for(use_cuda=True) == "cpu:gloo,cuda:nccl" and backend_for(use_cuda=False) == "gloo"
    assert backend_for(use_cuda=True, requested="nccl") == "nccl"


def test_a_cuda_only_group_fails_on_host_tensors_as_nccl_does(tmp_path):
    """`cuda:gloo` is a process group for CUDA tensors only, like NCCL: the emulation below is faithful."""
    result = torchrun("dist_backend=cuda:gloo", "hydra.run.dir=cuda_only", cwd=tmp_path, port=29518)
    assert result.returncode != 0 and "No backend type associated with device type cpu" in result.stderr


def test_mixed_backend_edge_cases_reach_a_report(tmp_path):
    """The production GPU backend's host half (cpu:gloo beside a CUDA-only backend) with a rank that
    evaluates nothing, masks drawn on the host (random pruner) and a loss that leaves the last MLP
    without gradients (attention states only)."""
    result = torchrun("dist_backend='cpu:gloo,cuda:gloo'", "eval.max_images=1", "pruner=random",
                      "healer.states=[attn]", "healer.epochs=2", "hydra.run.dir=edge", cwd=tmp_path, port=29519)
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(tmp_path / "edge" / "report.json")
    assert report["accuracy"]["images"] == 1 and report["environment"]["processes"] == 2
    assert report["healing"]["steps"] == 2 and report["healer"]["states"] == ["attn"]  # 32 images: 1 global batch
    healed = load_checkpoint(tmp_path / "edge" / "healed.safetensors", "heal")
    for layer, mask in healed.masks.items():
        assert not healed.weights[f"{layer}.weight"][~mask].any()
    assert "get no gradient from this loss" in result.stdout + result.stderr


def finished_progress(output: str) -> dict[str, int]:
    """How many times each progress line reached 100% (the output is a pipe: plain log lines)."""
    found = re.findall(r"([a-z]+(?: \([a-z_]+\))?): (\d+)/\2 \(100%\)", output)
    return {stage: [name for name, _ in found].count(stage) for stage, _ in found}


def test_two_gloo_processes_match_one(tmp_path):
    """Wanda's norms from half the calibration batches on each rank, summed; DDP healing; sharded evaluation."""
    alone = run_cli("run", *SHRUNK, "calib.count=64", "device=cpu", "hydra.run.dir=single", cwd=tmp_path)
    result = torchrun("calib.count=64", "hydra.run.dir=ddp", cwd=tmp_path, port=29517)
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = (load_checkpoint(tmp_path / d / "pruned.safetensors", "prune") for d in ("single", "ddp"))
    assert all(torch.equal(single.masks[k], ddp.masks[k]) for k in single.masks)
    healed = load_checkpoint(tmp_path / "ddp" / "healed.safetensors", "heal")
    assert all(torch.equal(healed.masks[k], single.masks[k]) for k in single.masks)
    one, two = read_json(tmp_path / "single" / "report.json"), read_json(tmp_path / "ddp" / "report.json")
    assert two["environment"]["processes"] == 2 and two["accuracy"]["images"] == one["accuracy"]["images"]
    for model in ("dense", "pruned"):  # no training involved: sharded evaluation must add up exactly
        assert two["accuracy"][model]["top1"] == pytest.approx(one["accuracy"][model]["top1"], abs=1e-9)
    # healing saw the same images in another order (DistributedSampler), so only close
    assert two["accuracy"]["healed"]["top1"] == pytest.approx(one["accuracy"]["healed"]["top1"], abs=3.0)
    assert two["healing"]["steps"] == one["healing"]["steps"]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if p.name.endswith(".log")) == ["run.log"]
    # progress: prune, heal and eval each finish once in the output, as in one process (rank 0 alone logs it)
    expected = {"pruning (wanda)": 1, "healing (starfish)": 1, "evaluating": 1}
    assert finished_progress(alone.stdout + alone.stderr) == expected
    assert finished_progress(result.stdout + result.stderr) == expected


def test_sparsegpt_over_two_ranks_gives_the_one_process_masks(tmp_path, monkeypatch):
    """Each rank reads half the calibration batches; the Hessians (like Wanda's norms, checked above) are summed
    over ranks, so the masks are the one-process masks and the updated weights agree to float rounding."""
    options = ["pruner=sparsegpt", "calib.count=64"]  # two batches of 32: one per rank
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as each torchrun rank: the same per-batch arithmetic, bit for bit
    run_cli("prune", *SHRUNK, "device=cpu", *options, "hydra.run.dir=single", cwd=tmp_path)
    result = torchrun(*options, "hydra.run.dir=ddp", cwd=tmp_path, port=29520, stage="prune")
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = (load_checkpoint(tmp_path / d / "pruned.safetensors", "prune") for d in ("single", "ddp"))
    assert single.masks.keys() == ddp.masks.keys()
    assert all(torch.equal(single.masks[k], ddp.masks[k]) for k in single.masks)
    assert all(torch.equal(single.weights[k], ddp.weights[k]) for k in single.weights)


def rank_memory(output: str) -> list[tuple[float, float]]:
    """Each rank's "holds X MB of trained parameters and Y MB of optimizer state" line."""
    return [(float(held), float(state)) for held, state in
            re.findall(r"this rank holds ([\d.]+) MB of trained parameters and ([\d.]+) MB of optimizer state", output)]


@pytest.mark.parametrize("model,options", [
    ("vit", [*SHRUNK, "healer.epochs=2"]),
    ("lm", ["model=lm_reference", "calib.count=8", "healer.epochs=2", "healer.batch_size=8", "eval.max_images=8",
            "eval.speed=false"]),
])
def test_fsdp_heals_as_one_process_does_with_half_the_state_per_rank(tmp_path, monkeypatch, model, options):
    """dist_strategy=fsdp shards every block over 2 gloo ranks: the same masks, healed weights within 1e-4
    (relative) of one process's (one global batch a step: the same images), and each rank holds half of the
    trained parameters and of Adam's state."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_cli("run", *options, "device=cpu", "hydra.run.dir=single", cwd=tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(29522 + (model == "lm")), "-m", "starfish_cli", "run", *options, "device=cpu", "dist_strategy=fsdp",
         "hydra.run.dir=fsdp"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    single, sharded = (load_checkpoint(tmp_path / d / "healed.safetensors", "heal") for d in ("single", "fsdp"))
    assert all(torch.equal(single.masks[k], sharded.masks[k]) for k in single.masks)
    for name, weight in single.weights.items():
        assert (sharded.weights[name] - weight).abs().max() <= 1e-4 * weight.abs().max(), name
    trained = sum(weight.numel() * 4 for name, weight in single.weights.items()
                  if name.removesuffix(".weight") in single.masks) / 2**20
    memory = rank_memory(result.stdout + result.stderr)
    assert len(memory) == 2  # one line per rank
    for held, state in memory:  # half of one process's (an odd row count gives one rank a row more)
        assert held == pytest.approx(trained / 2, rel=0.02) and state == pytest.approx(trained, rel=0.02)
