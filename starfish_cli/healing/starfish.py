"""STARFISH: heal a pruned ViT by aligning its internal states with the dense model's.

Reference recipe (arXiv 2606.01126), the defaults here: per-token 1 − cos over the
embedding dimension on every block's output, averaged over tokens, batch and blocks; only
the pruned weight matrices train; masks fixed; Adam, lr 6e-4 with per-step cosine decay to
1e-6, batch 32, 10 epochs; no labels. Variants are options: which states, the distance, an
added logit-KD term, and block-wise healing.
"""

import logging

import torch
import torch.nn.functional as F

from starfish_cli import distributed
from starfish_cli.data import loader
from starfish_cli.errors import StarfishError
from starfish_cli.healing.base import GradientHealer, HealResult, pruned_weight_names
from starfish_cli.healing.registry import HEALERS
from starfish_cli.healing.states import STATE_KINDS, STATE_LOSSES, collect_states, state_alignment_loss
from starfish_cli.models import forward_with_states

log = logging.getLogger("starfish")

TEACHER_MODES = ("auto", "gpu", "host", "recompute")
CACHE_BUDGET = 0.25  # the teacher cache may take this fraction of free GPU / available host memory
MODES = ("end_to_end", "blockwise")


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened logits, scaled by T² (Hinton et al.)."""
    return F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=-1),
        F.log_softmax(teacher_logits.float() / temperature, dim=-1),
        log_target=True, reduction="batchmean",
    ) * temperature**2


def teacher_cache_bytes(model, images: int, kinds: tuple[str, ...], bytes_per_value: int = 2) -> int:
    """Memory to cache the teacher's logits and states for every calibration image:
    images × (blocks × tokens × width per block-level kind + tokens × width for final_norm + classes) × bytes.
    """
    tokens = int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 0))
    width, blocks = int(model.embed_dim), len(model.blocks)
    per_image = int(model.num_classes)
    for kind in kinds:
        per_image += tokens * width * (1 if kind == "final_norm" else blocks)
    return images * per_image * bytes_per_value


def available_host_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def choose_teacher_mode(requested: str, estimate: int, device: torch.device) -> str:
    """`auto`: cache on the GPU if it fits a quarter of free GPU memory, else on the host if it fits
    a quarter of available host memory, else recompute the teacher every step."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and estimate <= CACHE_BUDGET * torch.cuda.mem_get_info(device)[0]:
        return "gpu"
    if estimate <= CACHE_BUDGET * available_host_bytes():
        return "host"
    return "recompute"


class TeacherTargets:
    """The teacher's logits and states for each calibration image: cached once (fp16, on the GPU or
    in host memory), or recomputed per batch."""

    def __init__(self, teacher, kinds: tuple[str, ...], mode: str, calibration, batch_size: int, device,
                 cache_dtype=torch.float16):
        self.teacher, self.kinds, self.device = teacher, kinds, device
        self.estimate = teacher_cache_bytes(teacher, len(calibration), kinds)
        self.mode = choose_teacher_mode(mode, self.estimate, device)
        log.info("teacher cache would take %.2f GB (%d images); teacher=%s → %s",
                 self.estimate / 1e9, len(calibration), mode,
                 {"gpu": "cached on the GPU", "host": "cached in host memory",
                  "recompute": "recomputed every step"}[self.mode])
        self.cache = None
        if self.mode != "recompute":
            where = device if self.mode == "gpu" else torch.device("cpu")
            self.cache = self._compute_all(calibration, batch_size, cache_dtype, where)

    @torch.no_grad()
    def _compute_all(self, calibration, batch_size, dtype, where) -> list[torch.Tensor]:
        cache = None
        for indices, images, *_ in loader(calibration, batch_size):
            logits, states = collect_states(self.teacher, images.to(self.device), self.kinds)
            outputs = [logits, *states]
            if cache is None:
                cache = [torch.empty((len(calibration), *t.shape[1:]), dtype=dtype, device=where) for t in outputs]
            for slot, tensor in zip(cache, outputs, strict=True):
                slot[indices.to(where)] = tensor.to(where, dtype)
        return cache or []

    @torch.no_grad()
    def __call__(self, indices, images) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.cache is None:
            logits, states = collect_states(self.teacher, images, self.kinds)
            return logits, states
        where = self.cache[0].device
        outputs = [slot[indices.to(where)].to(self.device, non_blocking=True).float() for slot in self.cache]
        return outputs[0], outputs[1:]


@HEALERS.register("starfish")
class StarfishHealer(GradientHealer):
    def __init__(
        self,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 6e-4,
        min_lr: float = 1e-6,
        weight_decay: float = 0.0,
        reshuffle: bool = False,
        states: list[str] | tuple[str, ...] = ("blocks",),
        loss: str = "cosine",
        kd_weight: float = 0.0,
        kd_temperature: float = 1.0,
        mode: str = "end_to_end",
        teacher: str = "auto",
        seed: int = 0,
    ):
        super().__init__(epochs, batch_size, lr, min_lr, weight_decay, seed, reshuffle)
        states = (states,) if isinstance(states, str) else tuple(states)
        for name, value, allowed in (("teacher", teacher, TEACHER_MODES), ("loss", loss, tuple(STATE_LOSSES)),
                                     ("mode", mode, MODES)):
            if value not in allowed:
                raise StarfishError(f"healer.{name}={value!r}: choose one of {', '.join(allowed)}")
        if not states or any(kind not in STATE_KINDS for kind in states):
            raise StarfishError(f"healer.states={list(states)}: choose from {', '.join(STATE_KINDS)}")
        if kd_weight < 0 or kd_temperature <= 0:
            raise StarfishError("healer.kd_weight must be ≥ 0 and healer.kd_temperature > 0")
        if mode == "blockwise" and (states != ("blocks",) or kd_weight):
            raise StarfishError("healer.mode=blockwise aligns block outputs only: use states=[blocks] and kd_weight=0")
        self.states, self.loss_name, self.kd_weight, self.kd_temperature = list(states), loss, kd_weight, kd_temperature
        self.mode, self.teacher = mode, teacher

    def describe(self):
        described = super().describe()
        described["loss"] = described.pop("loss_name")
        return described

    def prepare(self, student, teacher, calibration, device):
        self._targets = TeacherTargets(teacher, tuple(self.states), self.teacher, calibration, self.batch_size, device)

    @property
    def student_states(self) -> tuple[str, ...]:
        return tuple(self.states)

    def loss(self, outputs, batch, device):
        logits, states = outputs
        teacher_logits, teacher_states = self._targets(batch[0], batch[1].to(device, non_blocking=True))
        loss = state_alignment_loss(states, teacher_states, self.loss_name)
        if self.kd_weight:
            loss = loss + self.kd_weight * logit_kd_loss(logits, teacher_logits, self.kd_temperature)
        return loss

    def heal(self, student, teacher, masks, calibration, device, precision=torch.float32):
        if self.mode == "end_to_end":
            return super().heal(student, teacher, masks, calibration, device, precision)
        self._precision = precision
        return self._heal_blockwise(student, teacher, masks, calibration, device)

    def _heal_blockwise(self, student, teacher, masks, calibration, device) -> HealResult:
        """Each block in turn, on the inputs the already-healed prefix produces, towards the dense block output."""
        if distributed.current().active:
            raise StarfishError("healer.mode=blockwise runs in one process: launch it without torchrun")
        teacher_inputs, teacher_outputs = block_io(teacher, calibration, self.batch_size, device)
        result = HealResult(trained_parameters=pruned_weight_names(student))
        inputs = teacher_inputs  # embeddings are dense and frozen: block 0 sees the teacher's input
        for number, block in enumerate(student.blocks):
            names = [n for n in result.trained_parameters if n.startswith(f"blocks.{number}.")]
            block_set = BlockInputs(inputs)

            def loss_of_batch(batch, _forward, block=block, target=teacher_outputs[number]):
                indices, x = batch
                return state_alignment_loss([block(x.to(device))], [target[indices].to(device).float()],
                                            self.loss_name)

            result.steps += self.optimize(student, names, masks, block_set, device, result.loss_history,
                                          loss_of_batch, f"healing block {number}")
            with torch.no_grad():
                inputs = torch.cat([block(x.to(device)).cpu() for _, x in loader(block_set, self.batch_size)])
        return result


class BlockInputs(torch.utils.data.Dataset):
    def __init__(self, inputs: torch.Tensor):
        self.inputs = inputs

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return index, self.inputs[index]


@torch.no_grad()
def block_io(model, calibration, batch_size, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The input of the first block and the output of every block, for every calibration image (host memory)."""
    first_inputs, outputs = [], None
    handle = model.blocks[0].register_forward_pre_hook(lambda _m, args: first_inputs.append(args[0].cpu()))
    try:
        for _indices, images, *_ in loader(calibration, batch_size):
            states = forward_with_states(model, images.to(device))[1]
            outputs = [[s.cpu()] for s in states] if outputs is None else [o + [s.cpu()] for o, s in zip(outputs, states)]
    finally:
        handle.remove()
    return torch.cat(first_inputs), [torch.cat(o) for o in outputs]
