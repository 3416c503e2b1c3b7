"""Model families, registered once: each builds its models from a `model:` config and recognizes them
(timm's `register_model` + `create_model`), so run, load, export and compile reach every family alike.
Pruners, healers and evaluation reach a model's blocks, layers and states only through `structure_of`.
"""

from starfish_cli.models import vision, causal_lm  # noqa: F401,I001  (register the families, vision first)
from starfish_cli.models.base import FAMILIES, ModelStructure, build_model, family_of, structure_of

__all__ = ["FAMILIES", "ModelStructure", "build_model", "family_of", "structure_of"]
