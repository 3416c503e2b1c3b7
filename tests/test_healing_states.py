import pytest
import torch

from starfish_cli.healing.states import normalized_mse, per_block_cosine, state_alignment_loss, token_cosine_distance


def test_cosine_loss_is_zero_for_identical_states():
    states = [torch.randn(2, 5, 8) for _ in range(3)]
    assert state_alignment_loss(states, [s.clone() for s in states]).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(per_block_cosine(states, states), torch.ones(3))


def test_cosine_loss_by_hand():
    # token 1: same direction (distance 0); token 2: orthogonal (1); token 3: opposite (2) → mean 1
    student = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    teacher = torch.tensor([[[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]])
    assert token_cosine_distance(student, teacher).item() == pytest.approx(1.0)


def test_cosine_loss_ignores_scale_and_averages_blocks():
    a, b = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    assert token_cosine_distance(5 * a, b).item() == pytest.approx(token_cosine_distance(a, b).item(), rel=1e-5)
    loss = state_alignment_loss([a, a], [b, a])
    assert loss.item() == pytest.approx(token_cosine_distance(a, b).item() / 2, rel=1e-5)


def test_normalized_mse_by_hand():
    student = torch.tensor([[[1.0, 1.0]]])
    teacher = torch.tensor([[[2.0, 0.0]]])
    assert normalized_mse(student, teacher).item() == pytest.approx((1 + 1) / 4)
