"""Model families: what the pipeline needs to know about an architecture, in one place per family.

A family module subclasses `ModelStructure` and registers it; pruners, healers and evaluation
reach a model's blocks, prunable layers and internal states only through `structure_of(model)`.
"""

from collections.abc import Callable
from typing import Any

from torch import nn

from starfish_cli.errors import StarfishError
from starfish_cli.families import vision, causal_lm  # noqa: F401,I001  (register the families, vision first)
from starfish_cli.families.base import ModelStructure, structure_of

# model.family → the function that builds a model from the rest of the model config
BUILDERS: dict[str, Callable[..., nn.Module]] = {"vision": vision.build_model, "causal_lm": causal_lm.build_model}


def model_builder(model_config: dict[str, Any]) -> Callable[..., nn.Module]:
    """The builder of `model.family` (vision when the config names none)."""
    family = model_config.get("family", "vision")
    if family not in BUILDERS:
        raise StarfishError(f"model.family={family!r} is not a model family: use {', '.join(BUILDERS)}")
    return BUILDERS[family]


def build_model(**model_config: Any) -> nn.Module:
    return model_builder(model_config)(**model_config)


__all__ = ["BUILDERS", "ModelStructure", "build_model", "model_builder", "structure_of"]
