"""Sharded resumable state (torchrun): DCP save and load of weights, Adam and schedule; a safe metadata reader."""

import io
import os
import pickle

import pytest
import torch
import torch.distributed as dist
from torch import nn

from starfish_cli.healing.sharded_resume import LATEST, DCPMetadataUnpickler, ShardedResumeState, shards_folder


@pytest.fixture
def one_rank_group(monkeypatch):
    """A gloo process group of one rank in this process (DCP and the barriers need a group)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29700 + os.getpid() % 200))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def trained(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10, eta_min=1e-4)
    return model, optimizer, scheduler


def step(model, optimizer, scheduler):
    loss = model(torch.randn(4, 6)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def test_a_saved_state_resumes_into_a_fresh_model_and_continues_identically(tmp_path, one_rank_group):
    model, optimizer, scheduler = trained(0)
    state = ShardedResumeState(tmp_path / "heal_state.pt", 3, ["config"], model)
    history = [step(model, optimizer, scheduler) for _ in range(3)]
    state.save(3, dict(model.named_parameters()), optimizer, scheduler, history)
    assert (shards_folder(tmp_path / "heal_state.pt") / LATEST).is_file()
    continued = [step(model, optimizer, scheduler) for _ in range(2)]

    fresh, fresh_optimizer, fresh_scheduler = trained(1)  # other initial weights: all must come from the file
    again: list[float] = []
    resumed = ShardedResumeState(tmp_path / "heal_state.pt", 3, ["config"], fresh)
    assert resumed.resume(dict(fresh.named_parameters()), fresh_optimizer, fresh_scheduler, again) == 3
    assert again == history and fresh_scheduler.get_last_lr() != [1e-2]
    assert [step(fresh, fresh_optimizer, fresh_scheduler) for _ in range(2)] == continued  # weights, Adam, RNG
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))

    other = ShardedResumeState(tmp_path / "heal_state.pt", 3, ["another config"], fresh)
    assert other.resume(dict(fresh.named_parameters()), fresh_optimizer, fresh_scheduler, []) == 0
    resumed.remove()
    assert not shards_folder(tmp_path / "heal_state.pt").exists()


def test_the_metadata_reader_refuses_anything_but_checkpoint_records():
    class Payload:
        def __reduce__(self):
            return os.system, ("echo unpickled",)

    with pytest.raises(pickle.UnpicklingError, match="not part of a checkpoint's metadata"):
        DCPMetadataUnpickler(io.BytesIO(pickle.dumps(Payload()))).load()
    assert DCPMetadataUnpickler(io.BytesIO(pickle.dumps((torch.Size([2, 3]), torch.bfloat16)))).load() \
        == (torch.Size([2, 3]), torch.bfloat16)
