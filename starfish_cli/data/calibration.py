"""The calibration sampler: a small, seeded, class-balanced subset of a split, labels dropped."""

from collections.abc import Sequence

from dataclasses import dataclass
from typing import Annotated

import numpy as np

from starfish_cli.registry import Component, Range
from starfish_cli.runtime.errors import StarfishError


@dataclass(eq=False)
class CalibrationSampler(Component):
    """Picks `count` images (or `fraction` of the split) without replacement; for text, `count`
    windows of `seq_len` tokens (or `fraction` of the split's whole windows).

    With `balanced` and labels, every class gets an equal share (the remainder goes to
    randomly chosen classes); without labels the draw is uniform.
    """

    option_prefix = "calib"
    fraction: Annotated[float, Range(0, 1, low_open=True)] = 0.004
    count: Annotated[int, Range(1)] | None = None  # overrides fraction
    balanced: bool = True
    seq_len: Annotated[int, Range(2)] | None = None  # tokens per calibration window (text); null: the model's context

    def check(self) -> None:
        self.fraction = float(self.fraction)

    def size(self, split_size: int) -> int:
        size = self.count if self.count is not None else round(self.fraction * split_size)
        if size <= 0:
            raise StarfishError(
                f"calib.fraction={self.fraction} of {split_size} images is 0 images: raise calib.fraction or set calib.count"
            )
        if size > split_size:
            raise StarfishError(f"calib.count={size} exceeds the {split_size} images of the split: lower calib.count")
        return size

    def sample(self, split_size: int, labels: Sequence[int] | None, seed: int) -> list[int]:
        """Sorted indices into the split."""
        size = self.size(split_size)
        rng = np.random.default_rng(seed)
        if not self.balanced or labels is None:
            return sorted(int(i) for i in rng.choice(split_size, size=size, replace=False))
        return balanced_sample(np.asarray(labels), size, rng)


def balanced_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> list[int]:
    classes = np.unique(labels)
    members = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    quota = {c: size // len(classes) for c in classes}
    for c in rng.choice(classes, size=size % len(classes), replace=False):
        quota[c] += 1
    # a class smaller than its quota gives its shortfall to classes with images to spare
    shortfall = sum(max(0, quota[c] - len(members[c])) for c in classes)
    quota = {c: min(quota[c], len(members[c])) for c in classes}
    while shortfall:
        spare = [c for c in rng.permutation(classes) if quota[c] < len(members[c])]
        for c in spare[:shortfall]:
            quota[c] += 1
            shortfall -= 1
    chosen = np.concatenate([members[c][: quota[c]] for c in classes])
    return sorted(int(i) for i in chosen)
