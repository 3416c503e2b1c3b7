"""Data: the dataset registry (image and text sources), the calibration sampler, the loader, and the
bundled corpora (Fashion-MNIST, fortunes)."""

from starfish_cli.data import c4, images, text  # noqa: F401  (register the sources in DATASETS)
from starfish_cli.data.loader import loader
from starfish_cli.data.registry import DATASETS

__all__ = ["DATASETS", "loader"]
