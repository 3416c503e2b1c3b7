"""Internal states of a model and how far apart two models' states are.

States are the outputs of every block (the residual stream, all tokens, N×L×D), read
through the model's family structure (timm's `forward_intermediates` for ViTs).
"""

import torch
import torch.nn.functional as F

from starfish_cli.families import structure_of


def token_cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 − cos(h_student, h_teacher) over the embedding dim, averaged over tokens and batch."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """‖h_s − h_t‖² / ‖h_t‖² per token, averaged over tokens and batch."""
    student, teacher = student.float(), teacher.float()
    return ((student - teacher).pow(2).sum(-1) / teacher.pow(2).sum(-1).clamp_min(1e-12)).mean()


STATE_LOSSES = {"cosine": token_cosine_distance, "mse": normalized_mse}


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


def collect_states(model: torch.nn.Module, inputs: torch.Tensor, kinds: tuple[str, ...] = ("blocks",),
                   with_outputs: bool = True):
    """Outputs (logits) and the chosen internal states, in a fixed order, as one flat list.

    blocks: every block output; attn / mlp: every block's attention and MLP branch outputs
    (before the residual add); final_norm: the head's input norm. `with_outputs=False`: logits None,
    and the model stops after its last block unless final_norm is asked for.
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
    return (logits if with_outputs else None), states
