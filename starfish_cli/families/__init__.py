"""Model families: what the pipeline needs to know about an architecture, in one place per family.

A family module subclasses `ModelStructure` and registers it; pruners, healers and evaluation
reach a model's blocks, prunable layers and internal states only through `structure_of(model)`.
"""

from starfish_cli.families import vision  # noqa: F401  (registers the vision-transformer family)
from starfish_cli.families.base import ModelStructure, structure_of

__all__ = ["ModelStructure", "structure_of"]
