"""Internal states of a model and how far apart two models' states are.

States are the outputs of every block (the residual stream, all tokens, N×L×D), read
through the model's family structure (`forward_with_states`).
"""

import torch
import torch.nn.functional as F

from starfish_cli.models import structure_of


COSINE_EPS = 1e-8  # each norm's floor, as in F.cosine_similarity


class TokenCosine(torch.autograd.Function):
    """cos(a, b) over the last dim, as F.cosine_similarity computes it, with a hand-written backward:
    d cos/da = b/(|a||b|) − cos·a/|a|², two passes over the states where autograd through the
    normalized vectors takes about eight (the loss is a few percent of a healing step)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a_norm = torch.linalg.vector_norm(a, dim=-1).clamp_min_(COSINE_EPS)
        b_norm = torch.linalg.vector_norm(b, dim=-1).clamp_min_(COSINE_EPS)
        cos = (a * b).sum(-1).div_(a_norm * b_norm)
        ctx.save_for_backward(a, b, a_norm, b_norm, cos)
        return cos

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b, a_norm, b_norm, cos = ctx.saved_tensors
        shared = (grad / (a_norm * b_norm)).unsqueeze(-1)

        def towards(x, x_norm, other):  # d cos / dx, times grad
            return (other * shared).addcmul_(x, (grad * cos / x_norm.square()).unsqueeze(-1), value=-1)

        return (towards(a, a_norm, b) if ctx.needs_input_grad[0] else None,
                towards(b, b_norm, a) if ctx.needs_input_grad[1] else None)


def token_cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 − cos(h_student, h_teacher) over the embedding dim, averaged over tokens and batch."""
    return (1.0 - TokenCosine.apply(student.float(), teacher.float())).mean()


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """‖h_s − h_t‖² / ‖h_t‖² per token, averaged over tokens and batch."""
    student, teacher = student.float(), teacher.float()
    return ((student - teacher).pow(2).sum(-1) / teacher.pow(2).sum(-1).clamp_min(1e-12)).mean()


def standardized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(h_s − h_t)² per dimension in units of that dimension's mean square over the teacher's tokens in the batch,
    averaged over dimensions, tokens and batch. A language model's residual stream carries a few massive
    dimensions (Sun et al., 2024) that outweigh the rest in a token's norm, and so in `cosine` and `mse`; here
    every dimension counts alike."""
    student, teacher = student.float(), teacher.float()
    scale = teacher.pow(2).mean(dim=tuple(range(teacher.dim() - 1)), keepdim=True).clamp_min(1e-12)
    return ((student - teacher).pow(2) / scale).mean()


STATE_LOSSES = {"cosine": token_cosine_distance, "mse": normalized_mse, "standardized": standardized_mse}


def state_alignment_loss(
    student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], loss: str = "cosine"
) -> torch.Tensor:
    """The STARFISH objective: the per-block distance, averaged over blocks."""
    distance = STATE_LOSSES[loss]
    return torch.stack([distance(s, t) for s, t in zip(student_states, teacher_states, strict=True)]).mean()


@torch.no_grad()
def block_cosine(student_state: torch.Tensor, teacher_state: torch.Tensor) -> torch.Tensor:
    """Mean token cosine similarity of one block's output (1 = perfectly aligned)."""
    return F.cosine_similarity(student_state.float(), teacher_state.float(), dim=-1).mean()


def per_block_cosine(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor]) -> torch.Tensor:
    """`block_cosine` of each block, shape (blocks,)."""
    return torch.stack([block_cosine(s, t) for s, t in zip(student_states, teacher_states, strict=True)])


STATE_KINDS = ("blocks", "attn", "mlp", "final_norm")


def select_blocks(states: list[torch.Tensor], kinds: tuple[str, ...], blocks: list[int] | None,
                  count: int) -> list[torch.Tensor]:
    """`collect_states`' flat list (`count` states per block of each per-block kind) with only the states of
    `blocks` (all when None): a teacher's, for a student that kept those of its blocks."""
    if blocks is None:
        return states
    chosen, start = [], 0
    for kind in kinds:
        size = 1 if kind == "final_norm" else count
        chosen += states[start:start + size] if size == 1 else [states[start + index] for index in blocks]
        start += size
    return chosen


def collect_states(model: torch.nn.Module, inputs: torch.Tensor, kinds: tuple[str, ...] = ("blocks",),
                   with_outputs: bool = True, blocks: list[int] | None = None):
    """Outputs (logits) and the chosen internal states, in a fixed order, as one flat list.

    blocks: every block output; attn / mlp: every block's attention and MLP branch outputs
    (before the residual add); final_norm: the head's input norm. `with_outputs=False`: logits None,
    and the model stops after its last block unless final_norm is asked for. `blocks`: only these blocks' states.
    """
    structure = structure_of(model)
    captured: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds if kind != "blocks"}
    handles = []
    for kind in captured:
        for module in structure.branch_modules(kind):
            handles.append(module.register_forward_hook(lambda _m, _i, out, k=kind: captured[k].append(out)))
    try:
        logits, block_states = structure.forward_with_states(inputs, with_outputs or "final_norm" in kinds)
    finally:
        for handle in handles:
            handle.remove()
    states = []
    for kind in kinds:
        states += block_states if kind == "blocks" else captured[kind]
    return (logits if with_outputs else None), select_blocks(states, kinds, blocks, len(structure.blocks))
