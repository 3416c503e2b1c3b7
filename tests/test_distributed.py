"""torchrun with 2 CPU processes (gloo) gives the same masks and, within a small tolerance, the same accuracy."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import SHRUNK, needs_fmnist, read_json, run_cli
from starfish_cli.checkpoint import load_checkpoint

pytestmark = needs_fmnist


def test_two_gloo_processes_match_one(tmp_path):
    run_cli("run", *SHRUNK, "device=cpu", "hydra.run.dir=single", cwd=tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
         "-m", "starfish_cli", "run", *SHRUNK, "device=cpu", "hydra.run.dir=ddp"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
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
