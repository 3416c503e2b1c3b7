"""What the dense teacher gives every healer: its logits and states per calibration item (cached
or recomputed), the memory that caching them takes, and the logit-distillation loss (whole, or over a
causal LM's tokens a chunk at a time)."""

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from starfish_cli.data.loader import loader
from starfish_cli.runtime.distributed import processes_per_machine
from starfish_cli.runtime.memory import available_host_bytes
from starfish_cli.models import structure_of
from starfish_cli.models.outputs import per_token, rows_per_chunk, values_per_row
from starfish_cli.healing.footprint import tokens_per_item
from starfish_cli.healing.states import collect_states, select_blocks

log = logging.getLogger("starfish")

TEACHER_MODES = ("auto", "gpu", "host", "recompute")
CACHE_BUDGET = 0.25  # the teacher cache may take this fraction of free GPU / available host memory
FP16_MAX = torch.finfo(torch.float16).max
FP32 = 4


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened logits, scaled by T² (Hinton et al.); per output
    (an image, or a token of a causal LM's batch × tokens × vocab logits)."""
    student_logits, teacher_logits = student_logits.flatten(0, -2), teacher_logits.flatten(0, -2)
    return F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=-1),
        F.log_softmax(teacher_logits.float() / temperature, dim=-1),
        log_target=True, reduction="batchmean",
    ) * temperature**2


def _kl_sum(student_rows: torch.Tensor, teacher_rows: torch.Tensor, student_head: Callable, teacher_head: Callable,
            temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student_head(student_rows).float() / temperature, dim=-1),
                    F.log_softmax(teacher_head(teacher_rows).float() / temperature, dim=-1),
                    log_target=True, reduction="sum")


def chunked_logit_kd_loss(student_rows: torch.Tensor, teacher_rows: torch.Tensor, student_head: Callable,
                          teacher_head: Callable, temperature: float, chunk: int) -> torch.Tensor:
    """`logit_kd_loss(student_head(student_rows), teacher_head(teacher_rows), temperature)` with the heads run
    on `chunk` rows at a time (rows: the head's inputs, one output each, e.g. a causal LM's tokens). Each
    chunk's logits are recomputed in the backward pass rather than kept (activation checkpointing), so no more
    than one chunk's exist at once; rows that fit one chunk are computed as `logit_kd_loss` does."""
    rows = student_rows.shape[0]
    if rows <= chunk:
        return logit_kd_loss(student_head(student_rows), teacher_head(teacher_rows), temperature)
    total = student_rows.new_zeros((), dtype=torch.float32)
    for start in range(0, rows, chunk):
        total = total + checkpoint(_kl_sum, student_rows[start:start + chunk], teacher_rows[start:start + chunk],
                                   student_head, teacher_head, temperature, use_reentrant=False)
    return total / rows * temperature**2


def teacher_cache_bytes(model, images: int, kinds: tuple[str, ...], bytes_per_value: int = 2,
                        with_outputs: bool = True, tokens: int | None = None) -> int:
    """Memory to cache the teacher's states and outputs (`with_outputs`) for every calibration item of `tokens`
    tokens (None: the model's own count, a ViT's patches or a causal LM's window): items × (blocks × tokens ×
    width per block-level kind + tokens × width for final_norm) × bytes, plus the outputs: a classifier's logits
    (× bytes), or for a causal LM the head's input (tokens × width in fp32), from which `TeacherTargets` makes
    the logits of a batch when asked (a vocabulary-wide row per token would take vocabulary ÷ width times more).
    """
    structure = structure_of(model)
    window, width = structure.state_size()
    tokens = tokens or window
    blocks = len(structure.blocks)
    per_item = sum(tokens * width * (1 if kind == "final_norm" else blocks) for kind in kinds) * bytes_per_value
    if with_outputs:
        per_item += tokens * width * FP32 if per_token(structure) else structure.output_size() * bytes_per_value
    return images * per_item


def choose_teacher_mode(requested: str, estimate: int, device: torch.device) -> str:
    """`auto`: cache on the GPU if it fits a quarter of free GPU memory, else on the host if it fits
    a quarter of available host memory (shared by every rank on the machine), else recompute the
    teacher every step."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and estimate <= CACHE_BUDGET * torch.cuda.mem_get_info(device)[0]:
        return "gpu"
    if estimate <= CACHE_BUDGET * available_host_bytes() / processes_per_machine():
        return "host"
    return "recompute"


class TeacherTargets:
    """The teacher's logits and states for each calibration item: cached once (fp16, on the GPU or
    in host memory; a state with values beyond fp16's range is kept in bf16), or recomputed per batch.
    `with_outputs=False` (a loss that reads no logits): logits None, neither computed nor cached.

    A causal LM's logits (vocabulary-wide at every token) are never cached: its last block's output is (the
    head's input, fp32: tokens × width instead of tokens × vocabulary), and the head makes a batch's logits
    from it when asked, rounded as cached logits were (fp16), so a healer sees the same targets as before;
    `head_inputs` gives the head's input itself, for a loss that runs the head a chunk of tokens at a time."""

    def __init__(self, teacher, kinds: tuple[str, ...], mode: str, calibration, batch_size: int, device,
                 cache_dtype=torch.float16, with_outputs: bool = True, blocks: list[int] | None = None):
        self.teacher, self.kinds, self.device, self.with_outputs = teacher, kinds, device, with_outputs or not kinds
        self.structure = structure_of(teacher)
        self.blocks = blocks  # the teacher's blocks the student's are aligned with (None: all)
        self.keeps_head_input = self.with_outputs and per_token(self.structure)
        self.rows_per_chunk = rows_per_chunk(values_per_row(self.structure))
        self.estimate = teacher_cache_bytes(teacher, len(calibration), kinds, with_outputs=self.with_outputs,
                                            tokens=tokens_per_item(teacher, calibration))
        self.mode = choose_teacher_mode(mode, self.estimate, device)
        log.info("teacher cache would take %.2f GB (%d calibration items); teacher=%s → %s",
                 self.estimate / 1e9, len(calibration), mode,
                 {"gpu": "cached on the GPU", "host": "cached in host memory",
                  "recompute": "recomputed every step"}[self.mode])
        self.cache = None
        self.logits_dtype = cache_dtype  # what cached logits are rounded to (bf16 past fp16's range)
        if self.mode != "recompute":
            where = device if self.mode == "gpu" else torch.device("cpu")
            self.cache = self._compute_all(calibration, batch_size, cache_dtype, where)

    def _teacher_pass(self, images) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(logits, or for a causal LM the head's input; the kinds' states) of one batch."""
        if not self.keeps_head_input:
            return collect_states(self.teacher, images, self.kinds, self.with_outputs, self.blocks)
        # the model stops after its last block: its output is the head's input, the LM head does not run
        _, states = collect_states(self.teacher, images, (*self.kinds, "blocks"), with_outputs=False)
        states, last_block = states[:len(states) - len(self.structure.blocks)], states[-1]
        return last_block, select_blocks(states, self.kinds, self.blocks, len(self.structure.blocks))

    @torch.no_grad()
    def _compute_all(self, calibration, batch_size, dtype, where) -> list[torch.Tensor]:
        cache = None
        for indices, images, *_ in loader(calibration, batch_size, device=self.device):
            first, states = self._teacher_pass(images.to(self.device))
            outputs = [first, *states] if self.with_outputs else states
            if cache is None:
                cache = [torch.empty((len(calibration), *t.shape[1:]), device=where,
                                     dtype=torch.float32 if number == 0 and self.keeps_head_input else dtype)
                         for number, t in enumerate(outputs)]
            for number, tensor in enumerate(outputs):
                if cache[number].dtype == torch.float16 and tensor.abs().max() > FP16_MAX:
                    log.warning("teacher output %d exceeds fp16's range (|x| up to %.3g): cached in bf16",
                                number, float(tensor.abs().max()))
                    cache[number] = cache[number].to(torch.bfloat16)
                cache[number][indices.to(where)] = tensor.to(where, cache[number].dtype)
        return cache or []

    @torch.no_grad()
    def head_inputs(self, indices, images) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(the outputs: logits, or a causal LM's head input; the kinds' states) of a batch, from the cache or
        computed now."""
        if self.cache is None:
            return self._teacher_pass(images)
        where = self.cache[0].device
        outputs = [slot[indices.to(where)].to(self.device, non_blocking=True).float() for slot in self.cache]
        return (outputs[0], outputs[1:]) if self.with_outputs else (None, outputs)

    @torch.no_grad()
    def logits(self, head_input: torch.Tensor) -> torch.Tensor:
        """The teacher's logits from its head's input; rounded as cached logits are when the teacher is cached."""
        logits = self.structure.head(head_input)
        if self.cache is None:
            return logits
        if self.logits_dtype == torch.float16 and logits.abs().max() > FP16_MAX:
            self.logits_dtype = torch.bfloat16
        return logits.to(self.logits_dtype).float()

    def __call__(self, indices, images) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        first, states = self.head_inputs(indices, images)
        return (self.logits(first) if self.keeps_head_input else first), states
