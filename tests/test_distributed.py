"""torchrun with 2 CPU processes (gloo) gives the same masks and, within a small tolerance, the same accuracy.
The one-process runs they are compared with run in process, on one thread as each rank does."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SHRUNK, needs_fmnist, read_json, run_in_process
from starfish_cli.artifacts.checkpoint import load_checkpoint

pytestmark = [needs_fmnist, pytest.mark.slow]  # torchrun's processes


def one_process(*args, cwd):
    """`starfish ARGS` in this process on one thread, as each torchrun rank (OMP_NUM_THREADS=1) computes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_in_process(*args, cwd=cwd)
    finally:
        torch.set_num_threads(threads)


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


CUDA_ONLY_GROUP = """
import torch, torch.distributed as dist
dist.init_process_group("cuda:gloo", store=dist.HashStore(), rank=0, world_size=1)
dist.all_reduce(torch.ones(2))
"""


def test_a_cuda_only_group_fails_on_host_tensors_as_nccl_does():
    """`cuda:gloo` is a process group for CUDA tensors only, like NCCL: the emulation below is faithful."""
    result = subprocess.run([sys.executable, "-c", CUDA_ONLY_GROUP], capture_output=True, text=True, timeout=120)
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


def close_weights(first, second) -> bool:
    """Every tensor within 1e-4 of the other, relative to its largest value."""
    return all((second.weights[name] - weight).abs().max() <= 1e-4 * weight.abs().max()
               for name, weight in first.weights.items())


def test_two_gloo_processes_match_one_with_ddp_and_with_fsdp(tmp_path):
    """Wanda's norms from half the calibration batches on each rank, summed; one global batch of 16 a step
    (DDP: 8 per rank, gradients averaged; FSDP2: every block sharded, each rank holding half of the trained
    parameters and of Adam's state); sharded evaluation; progress from rank 0 only. Then the FSDP2 run killed
    once its first sharded checkpoint is complete, and resumed."""
    options = ["calib.count=64", "healer.batch_size=16", "healer.epochs=2", "healer.save_every=4"]
    alone = one_process("run", *SHRUNK, *options, "device=cpu", "hydra.run.dir=single", cwd=tmp_path)
    result = torchrun(*options, "hydra.run.dir=ddp", cwd=tmp_path, port=29517)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = torchrun(*options, "dist_strategy=fsdp", "hydra.run.dir=fsdp", cwd=tmp_path, port=29521)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    single, ddp = (load_checkpoint(tmp_path / d / "pruned.safetensors", "prune") for d in ("single", "ddp"))
    assert all(torch.equal(single.masks[k], ddp.masks[k]) for k in single.masks)
    healed = {d: load_checkpoint(tmp_path / d / "healed.safetensors", "heal") for d in ("single", "ddp", "fsdp")}
    for strategy in ("ddp", "fsdp"):
        assert all(torch.equal(healed[strategy].masks[k], single.masks[k]) for k in single.masks)
        assert close_weights(healed["single"], healed[strategy]), strategy
    one, two = read_json(tmp_path / "single" / "report.json"), read_json(tmp_path / "ddp" / "report.json")
    assert two["environment"]["processes"] == 2 and two["accuracy"]["images"] == one["accuracy"]["images"]
    for model in ("dense", "pruned"):  # no training involved: sharded evaluation must add up exactly
        assert two["accuracy"][model]["top1"] == pytest.approx(one["accuracy"][model]["top1"], abs=1e-9)
    assert two["healing"]["steps"] == one["healing"]["steps"] == 8
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if p.name.endswith(".log")) == ["run.log"]
    # progress: prune, heal and eval each finish once in the output, as in one process (rank 0 alone logs it)
    expected = {"pruning (wanda)": 1, "healing (starfish)": 1, "evaluating": 1}
    assert finished_progress(alone.stdout + alone.stderr) == expected
    assert finished_progress(result.stdout + result.stderr) == expected
    check_half_the_state(healed["single"], sharded.stdout + sharded.stderr)
    resumes_to_the_same_weights(options, tmp_path, "fsdp")


def resumes_to_the_same_weights(options: list[str], cwd: Path, whole: str) -> None:
    """SIGKILL to torchrun and both ranks once a sharded checkpoint (DCP) is complete; the same command again
    continues from it and ends with the uninterrupted run's (`whole`) weights and loss history, bit for bit."""
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29526",
               "-m", "starfish_cli", "run", *SHRUNK, "device=cpu", *options, "dist_strategy=fsdp",
               "hydra.run.dir=killed"]
    agent = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = cwd / "killed" / "heal_state_shards" / "latest.json"
    deadline = time.monotonic() + 300
    while not latest.exists() and agent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    ranks = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()  # each in its own session
    for pid in [agent.pid, *map(int, ranks)]:
        os.kill(pid, signal.SIGKILL)
    agent.wait()
    assert latest.exists() and not (cwd / "killed" / "healed.safetensors").exists()
    resumed = torchrun(*options, "dist_strategy=fsdp", "hydra.run.dir=killed", cwd=cwd, port=29527)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming healing from" in resumed.stdout + resumed.stderr
    assert not latest.parent.exists()  # finished: the sharded state is removed
    first, again = (load_checkpoint(cwd / d / "healed.safetensors", "heal") for d in (whole, "killed"))
    assert all(torch.equal(first.weights[name], again.weights[name]) for name in first.weights)
    assert read_json(cwd / "killed" / "report.json")["healing"]["loss_history"] \
        == read_json(cwd / whole / "report.json")["healing"]["loss_history"]


def rank_memory(output: str) -> list[tuple[float, float]]:
    """Each rank's "holds X MB of trained parameters and Y MB of optimizer state" line."""
    return [(float(held), float(state)) for held, state in
            re.findall(r"this rank holds ([\d.]+) MB of trained parameters and ([\d.]+) MB of optimizer state", output)]


def check_half_the_state(single, output: str) -> None:
    """Each rank's logged trained-parameter and optimizer bytes are half of the whole (Adam: two per value)."""
    trained = sum(weight.numel() * 4 for name, weight in single.weights.items()
                  if name.removesuffix(".weight") in single.masks) / 2**20
    memory = rank_memory(output)
    assert len(memory) == 2  # one line per rank
    for held, state in memory:  # an odd row count gives one rank a row more
        assert held == pytest.approx(trained / 2, rel=0.02) and state == pytest.approx(trained, rel=0.02)


def test_sparsegpt_and_fsdp_over_two_ranks_on_the_language_model(tmp_path):
    """SparseGPT with each rank reading half the calibration batches, the Hessians summed over ranks: the
    one-process masks and weights, bit for bit (the same thread count). Then FSDP2 healing of the causal LM
    (decoder layers sharded, the forward stopped after the last one): within 1e-4, half the state per rank."""
    options = ["model=lm_reference", "pruner=sparsegpt", "healer.recipe=reference", "calib.count=64", "healer.epochs=2",
               "healer.batch_size=64",
               "eval.max_images=8", "eval.speed=false", "device=cpu"]  # two calibration batches of 32: one per rank
    one_process("run", *options, "hydra.run.dir=single", cwd=tmp_path)  # the same per-batch arithmetic as a rank
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29523",
         "-m", "starfish_cli", "run", *options, "dist_strategy=fsdp", "hydra.run.dir=fsdp"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    pruned = [load_checkpoint(tmp_path / d / "pruned.safetensors", "prune") for d in ("single", "fsdp")]
    assert all(torch.equal(pruned[0].masks[k], pruned[1].masks[k]) for k in pruned[0].masks)
    assert all(torch.equal(pruned[0].weights[k], pruned[1].weights[k]) for k in pruned[0].weights)
    single, sharded = (load_checkpoint(tmp_path / d / "healed.safetensors", "heal") for d in ("single", "fsdp"))
    assert all(torch.equal(single.masks[k], sharded.masks[k]) for k in single.masks)
    assert close_weights(single, sharded)
    check_half_the_state(single, result.stdout + result.stderr)
