"""The teacher's targets for a causal LM without its vocabulary-wide logits: the head's input is cached and
the logits made a batch (or a chunk of tokens) at a time; the chunked distillation loss equals the whole one."""

import copy

import pytest
import torch
from torch import nn

from starfish_cli.healing import HEALERS, teacher
from starfish_cli.healing.teacher import TeacherTargets, chunked_logit_kd_loss, logit_kd_loss, teacher_cache_bytes
from starfish_cli.models import structure_of
from starfish_cli.pruning import PRUNERS

pytest.importorskip("transformers")
CPU = torch.device("cpu")


class Windows(torch.utils.data.Dataset):
    """Token windows as the calibration gives them: (index, tokens)."""

    def __init__(self, count: int, length: int, seed: int = 0):
        self.tokens = torch.randint(0, 2048, (count, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        return index, self.tokens[index]


@pytest.fixture(scope="module")
def lm():
    from starfish_cli.models.causal_lm import build_model

    return build_model("lm_reference").requires_grad_(False)


class CountingHead(nn.Module):
    """A norm and a linear head that remembers the most rows it was given at once."""

    def __init__(self, width: int, vocabulary: int):
        super().__init__()
        self.norm, self.linear, self.most_rows = nn.LayerNorm(width), nn.Linear(width, vocabulary), 0

    def forward(self, rows):
        self.most_rows = max(self.most_rows, rows.shape[0])
        return self.linear(self.norm(rows))


@pytest.mark.parametrize("chunk", [1, 3, 8, 100])
def test_chunked_kd_equals_the_whole_loss_and_its_gradient(chunk):
    torch.manual_seed(0)
    head = CountingHead(6, 40)
    student, teacher_rows = torch.randn(20, 6, requires_grad=True), torch.randn(20, 6)
    whole = logit_kd_loss(head(student), head(teacher_rows), temperature=2.0)
    (whole_grad,) = torch.autograd.grad(whole, student)
    head.most_rows = 0
    chunked = chunked_logit_kd_loss(student, teacher_rows, head, head, 2.0, chunk)
    (chunked_grad,) = torch.autograd.grad(chunked, student)
    assert head.most_rows == min(chunk, 20)  # forward and the recomputation in backward: a chunk at a time
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(chunked_grad, whole_grad, rtol=1e-5, atol=1e-8)
    assert whole.item() > 0.01  # different rows: a loss that could be wrong


def test_a_causal_lm_caches_its_head_input_and_gives_the_logits_it_cached_before(lm):
    calibration = Windows(6, 32)
    targets = TeacherTargets(lm, (), "host", calibration, 4, CPU)
    assert targets.keeps_head_input and len(targets.cache) == 1
    assert targets.cache[0].shape == (6, 32, 128) and targets.cache[0].dtype == torch.float32  # tokens × width
    # 6 windows × 32 tokens × 128 wide in fp32, not × 2,048-token vocabulary, nor at the 128-token context
    assert targets.estimate == teacher_cache_bytes(lm, 6, (), tokens=32) == 6 * 32 * 128 * 4
    indices = torch.tensor([4, 1])
    logits, states = targets(indices, None)
    expected = lm(input_ids=calibration.tokens[indices]).logits
    assert states == [] and logits.shape == expected.shape
    assert torch.equal(logits, expected.half().float())  # as the fp16 logits cache gave them
    recomputed, _ = TeacherTargets(lm, (), "recompute", calibration, 4, CPU)(indices, calibration.tokens[indices])
    torch.testing.assert_close(recomputed, expected, rtol=1e-5, atol=1e-5)


def test_state_targets_and_the_head_input_together(lm):
    """STARFISH with a KD term: block states as before, and logits made from the cached head input."""
    calibration = Windows(4, 16)
    targets = TeacherTargets(lm, ("blocks",), "host", calibration, 4, CPU)
    logits, states = targets(torch.arange(4), None)
    expected_logits, expected_states = structure_of(lm).forward_with_states(calibration.tokens)
    assert len(states) == 4 and all(torch.equal(s, e.half().float()) for s, e in zip(states, expected_states))
    assert torch.equal(logits, expected_logits.half().float())


def heal_kd(lm, pruned, masks, chunk, monkeypatch):
    monkeypatch.setattr(teacher, "rows_per_chunk", lambda values: chunk)
    student = copy.deepcopy(pruned)
    result = HEALERS.build({"name": "kd", "epochs": 1, "batch_size": 4, "lr": 1e-4}).heal(
        student, lm, masks, Windows(8, 16), CPU)
    return student, result.loss_history


def test_kd_on_a_causal_lm_heals_a_chunk_of_tokens_at_a_time_as_it_does_whole(lm, monkeypatch):
    pruned = copy.deepcopy(lm)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.5}).prune(pruned, None)
    whole_student, whole = heal_kd(lm, pruned, masks, 10**9, monkeypatch)  # one chunk: the batch's logits at once
    chunked_student, chunked = heal_kd(lm, pruned, masks, 7, monkeypatch)  # 64 tokens a batch, in chunks of 7
    assert len(whole) == 2 and min(whole) > 0
    assert chunked == pytest.approx(whole, rel=1e-4)
    moved = 0
    for (name, a), b, before in zip(whole_student.named_parameters(), chunked_student.parameters(), pruned.parameters()):
        # Adam scales a gradient's rounding up to a step where the gradient is near zero: at most lr apart
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=name)
        moved += not torch.equal(a, before)
    assert moved == len(structure_of(lm).prunable_layers())  # every pruned matrix trained, nothing else
