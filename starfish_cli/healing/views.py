"""Random views of a calibration batch for function matching (Beyer et al. 2022, "a good teacher is
patient and consistent"): each healing step shows the student and the dense teacher the same fresh view."""

import torch
import torch.nn.functional as F

from starfish_cli.runtime.errors import StarfishError

AUGMENTATIONS = ("flip", "shift", "mixup", "cutmix")  # applied in this order


def beta_draws(alpha: float, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` draws of Beta(α, α) from `generator`. torch's Beta sampler takes no generator, so it
    runs on the global RNG with the generator's state swapped in; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        draws = torch.distributions.Beta(float(alpha), float(alpha)).sample((count,))
        generator.set_state(torch.get_rng_state())
    return draws


def flip_images(images: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Mirror left–right the images where `flipped` (N booleans) is true."""
    return torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)


def shift_images(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Translate image i by `offsets[i] = (dy, dx)` pixels (down, right); the edge rows and columns
    are replicated into the uncovered border, so no value from outside the image appears."""
    count, channels, height, width = images.shape
    margin = int(offsets.abs().max()) if offsets.numel() else 0
    offsets = offsets.to(images.device)
    padded = F.pad(images, (margin,) * 4, mode="replicate") if margin else images
    rows = torch.arange(height, device=images.device) + margin - offsets[:, :1]  # N × H: source row of each row
    columns = torch.arange(width, device=images.device) + margin - offsets[:, 1:]  # N × W
    picked = padded.gather(2, rows.view(count, 1, height, 1).expand(-1, channels, -1, padded.shape[-1]))
    return picked.gather(3, columns.view(count, 1, 1, width).expand(-1, channels, height, -1))


def mix_images(images: torch.Tensor, partners: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mixup: image i becomes `weights[i] · image i + (1 − weights[i]) · image partners[i]`."""
    weights = weights.to(images.dtype).view(-1, 1, 1, 1)
    return weights * images + (1 - weights) * images[partners]


def paste_boxes(images: torch.Tensor, partners: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """CutMix: image i gets the box `boxes[i] = (top, left, height, width)` of image partners[i]."""
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    columns = torch.arange(width, device=images.device).view(1, 1, width)
    top, left, box_height, box_width = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    inside = (rows >= top) & (rows < top + box_height) & (columns >= left) & (columns < left + box_width)
    return torch.where(inside.unsqueeze(1), images[partners], images)


class CalibrationViews:
    """Draws random views of N×C×H×W batches of normalized model inputs from its own seeded generator
    (reproducible, and the global RNG is left alone); the random numbers are drawn on the CPU, so a
    seed gives the same views on any device."""

    def __init__(self, augment: list[str] | tuple[str, ...], shift: int = 2, mix_alpha: float = 0.4, seed: int = 0):
        unknown = [name for name in augment if name not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentations {unknown}: choose from {', '.join(AUGMENTATIONS)}")
        self.augment, self.shift, self.mix_alpha = set(augment), shift, mix_alpha
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.augment:
            return images
        if images.dim() != 4 or not images.is_floating_point():
            raise StarfishError(f"healer.augment needs image batches (N×C×H×W floats), not {list(images.shape)} "
                                f"{images.dtype}: use healer.augment=[] with this model")
        count, _, height, width = images.shape
        draw = self.generator
        if "flip" in self.augment:
            images = flip_images(images, (torch.rand(count, generator=draw) < 0.5).to(images.device))
        if "shift" in self.augment:
            offsets = torch.randint(-self.shift, self.shift + 1, (count, 2), generator=draw)
            images = shift_images(images, offsets)
        if "mixup" in self.augment:
            partners = torch.randperm(count, generator=draw).to(images.device)
            images = mix_images(images, partners, beta_draws(self.mix_alpha, count, draw).to(images.device))
        if "cutmix" in self.augment:
            partners = torch.randperm(count, generator=draw).to(images.device)
            side = beta_draws(self.mix_alpha, count, draw).sqrt()  # box area / image area ~ Beta(α, α)
            box_height, box_width = (side * height).round().long(), (side * width).round().long()
            top = (torch.rand(count, generator=draw) * (height - box_height + 1)).long()
            left = (torch.rand(count, generator=draw) * (width - box_width + 1)).long()
            boxes = torch.stack([top, left, box_height, box_width], dim=1)
            images = paste_boxes(images, partners, boxes.to(images.device))
        return images
