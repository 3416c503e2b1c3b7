"""Building timm vision transformers and finding their blocks and prunable linear layers."""

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import starfish_cli.reference_model  # noqa: F401  (registers vit_fmnist with timm)
from starfish_cli.errors import StarfishError


def build_model(
    name: str,
    pretrained: bool = True,
    checkpoint_path: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm model by registry name, with pretrained weights from the hub or a local checkpoint."""
    kwargs = dict(kwargs or {})
    if not timm.is_model(name) and not name.startswith("hf-hub:"):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise StarfishError(f"unknown model {name!r}: set model.name to a timm model name{hint}")
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise StarfishError(f"model.checkpoint_path {str(path)!r} does not exist: give the path of a weights file")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        pretrained = True
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError, ValueError) as error:
        if pretrained and not checkpoint_path:
            raise StarfishError(
                f"could not load pretrained weights for {name!r} ({_first_line(error)}): check network access "
                "to the HF hub, or set model.checkpoint_path=FILE or model.pretrained=false"
            ) from error
        raise StarfishError(f"could not build model {name!r}: {_first_line(error)}") from error
    return _match_data_config(model).eval()


def _match_data_config(model: nn.Module) -> nn.Module:
    """Keep the timm data config's input size equal to the model's (e.g. after kwargs img_size=…)."""
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    proj = getattr(patch_embed, "proj", None)
    config = dict(getattr(model, "pretrained_cfg", {}) or {})
    if img_size and isinstance(proj, nn.Conv2d):
        input_size = (proj.in_channels, *img_size)
        if tuple(config.get("input_size", ())) != input_size:
            model.pretrained_cfg = {**config, "input_size": input_size}
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks whose outputs `forward_intermediates` returns, in order."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not hasattr(model, "forward_intermediates"):
        raise StarfishError(
            f"{type(model).__name__} is not a timm vision transformer with `blocks` and "
            "`forward_intermediates`: choose a ViT/DeiT model"
        )
    return list(blocks)


def prunable_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every linear layer inside the transformer blocks (qkv, proj, fc1, fc2 for a ViT), by full name.

    Patch embedding, tokens, norms, biases and the classifier head stay dense.
    """
    transformer_blocks(model)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("blocks.")
    }


def num_prefix_tokens(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 0))


def forward_with_states(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the output of every block (all tokens, prefix tokens first: N×L×D)."""
    final, intermediates = model.forward_intermediates(
        images, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=False
    )
    states = []
    for item in intermediates:
        if isinstance(item, tuple):
            spatial, prefix = item
            item = spatial if prefix is None else torch.cat([prefix, spatial], dim=1)
        states.append(item)
    return model.forward_head(final), states
