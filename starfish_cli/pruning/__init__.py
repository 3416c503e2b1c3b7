"""Pruners: one file each, registered by name in `PRUNERS`."""

from starfish_cli.pruning import global_magnitude, magnitude, random, sparsegpt, structured, wanda  # noqa: F401  (register)
from starfish_cli.pruning.base import Pruner
from starfish_cli.pruning.registry import PRUNERS

__all__ = ["PRUNERS", "Pruner"]
