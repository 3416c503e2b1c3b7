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


def test_token_cosine_matches_torch_values_and_gradients():
    import torch.nn.functional as F

    from starfish_cli.healing.states import TokenCosine

    torch.manual_seed(0)
    a, b = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 4, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(TokenCosine.apply, (a.clone().requires_grad_(), b.clone().requires_grad_()))
    a[0, 0] = 0.0  # a zero vector: the norm's floor, as in torch
    weights = torch.randn(3, 4, dtype=torch.float64)
    gradients = []
    for cosine in (TokenCosine.apply, lambda x, y: F.cosine_similarity(x, y, dim=-1)):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        value = cosine(x, y)
        (value * weights).sum().backward()
        gradients.append((value.detach(), x.grad, y.grad))
    for ours, torchs in zip(*gradients):
        torch.testing.assert_close(ours, torchs)
    student = torch.randn(2, 5, 8, requires_grad=True)
    token_cosine_distance(student, torch.randn(2, 5, 8)).backward()  # the teacher side needs no gradient
    assert student.grad is not None and student.grad.shape == student.shape


def test_normalized_mse_by_hand():
    student = torch.tensor([[[1.0, 1.0]]])
    teacher = torch.tensor([[[2.0, 0.0]]])
    assert normalized_mse(student, teacher).item() == pytest.approx((1 + 1) / 4)


def test_standardized_mse_weighs_every_dimension_alike():
    """A massive dimension (≈1000 against ≈1) outweighs the rest in the normalized MSE, not in the standardized one."""
    from starfish_cli.healing.states import standardized_mse
    teacher = torch.randn(2, 16, 8)
    teacher[..., 0] = 1000.0 + teacher[..., 0]  # a massive dimension, as in an LLM's residual stream
    off_small = teacher.clone()
    off_small[..., 1:] += 0.5 * teacher[..., 1:].pow(2).mean((0, 1)).sqrt()  # every small dim off by half its scale
    off_massive = teacher.clone()
    off_massive[..., 0] *= 1.1  # the massive dim off by 10%
    assert normalized_mse(off_small, teacher) < normalized_mse(off_massive, teacher)
    assert standardized_mse(off_small, teacher) > standardized_mse(off_massive, teacher)
    assert torch.isclose(standardized_mse(off_small, teacher), torch.tensor(0.25 * 7 / 8), rtol=1e-4)
    assert standardized_mse(teacher, teacher) == 0
