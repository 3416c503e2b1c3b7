"""What the dense teacher gives every healer: its logits and states per calibration image (cached
or recomputed), the memory that caching them takes, and the logit-distillation loss."""

import logging

import torch
import torch.nn.functional as F

from starfish_cli.data.loader import loader
from starfish_cli.runtime.distributed import processes_per_machine
from starfish_cli.models import structure_of
from starfish_cli.healing.states import collect_states

log = logging.getLogger("starfish")

TEACHER_MODES = ("auto", "gpu", "host", "recompute")
CACHE_BUDGET = 0.25  # the teacher cache may take this fraction of free GPU / available host memory
FP16_MAX = torch.finfo(torch.float16).max


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened logits, scaled by T² (Hinton et al.); per output
    (an image, or a token of a causal LM's batch × tokens × vocab logits)."""
    student_logits, teacher_logits = student_logits.flatten(0, -2), teacher_logits.flatten(0, -2)
    return F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=-1),
        F.log_softmax(teacher_logits.float() / temperature, dim=-1),
        log_target=True, reduction="batchmean",
    ) * temperature**2


def teacher_cache_bytes(model, images: int, kinds: tuple[str, ...], bytes_per_value: int = 2,
                        with_outputs: bool = True) -> int:
    """Memory to cache the teacher's logits (`with_outputs`) and states for every calibration image:
    images × (blocks × tokens × width per block-level kind + tokens × width for final_norm + outputs) × bytes.
    """
    structure = structure_of(model)
    tokens, width = structure.state_size()
    blocks = len(structure.blocks)
    per_image = structure.output_size() if with_outputs else 0
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
    """The teacher's logits and states for each calibration image: cached once (fp16, on the GPU or
    in host memory; a state with values beyond fp16's range is kept in bf16), or recomputed per batch.
    `with_outputs=False` (a loss that reads no logits): logits None, neither computed nor cached."""

    def __init__(self, teacher, kinds: tuple[str, ...], mode: str, calibration, batch_size: int, device,
                 cache_dtype=torch.float16, with_outputs: bool = True):
        self.teacher, self.kinds, self.device, self.with_outputs = teacher, kinds, device, with_outputs or not kinds
        self.estimate = teacher_cache_bytes(teacher, len(calibration), kinds, with_outputs=self.with_outputs)
        self.mode = choose_teacher_mode(mode, self.estimate, device)
        log.info("teacher cache would take %.2f GB (%d calibration items); teacher=%s → %s",
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
        for indices, images, *_ in loader(calibration, batch_size, device=self.device):
            logits, states = collect_states(self.teacher, images.to(self.device), self.kinds, self.with_outputs)
            outputs = [logits, *states] if self.with_outputs else states
            if cache is None:
                cache = [torch.empty((len(calibration), *t.shape[1:]), dtype=dtype, device=where) for t in outputs]
            for number, tensor in enumerate(outputs):
                if cache[number].dtype == torch.float16 and tensor.abs().max() > FP16_MAX:
                    log.warning("teacher output %d exceeds fp16's range (|x| up to %.3g): cached in bf16",
                                number, float(tensor.abs().max()))
                    cache[number] = cache[number].to(torch.bfloat16)
                cache[number][indices.to(where)] = tensor.to(where, cache[number].dtype)
        return cache or []

    @torch.no_grad()
    def __call__(self, indices, images) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.cache is None:
            return collect_states(self.teacher, images, self.kinds, self.with_outputs)
        where = self.cache[0].device
        outputs = [slot[indices.to(where)].to(self.device, non_blocking=True).float() for slot in self.cache]
        return (outputs[0], outputs[1:]) if self.with_outputs else (None, outputs)
