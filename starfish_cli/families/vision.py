"""The vision family: timm vision transformers (ViT, DeiT, DeiT3 …) built by name, and their structure."""

from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from torch import nn

import starfish_cli.reference_model  # noqa: F401  (registers vit_fmnist with timm)
from starfish_cli.errors import StarfishError
from starfish_cli.families.base import ModelStructure, register_family


DATA_CONFIG_KEYS = ("mean", "std", "input_size", "crop_pct", "crop_mode", "interpolation")


def build_model(
    name: str,
    pretrained: bool = True,
    checkpoint_path: str | None = None,
    kwargs: dict[str, Any] | None = None,
    data_config: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm model by registry name, with pretrained weights from the hub or a local checkpoint.

    `data_config` sets the model's own preprocessing (`mean`, `std`, `input_size`, `crop_pct`,
    `crop_mode`, `interpolation`) in its `pretrained_cfg`, where timm's `resolve_data_config` reads it.
    """
    kwargs = dict(kwargs or {})
    data_config = dict(data_config or {})
    unknown = sorted(set(data_config) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise StarfishError(f"model.data_config has no key {unknown[0]!r}: use {', '.join(DATA_CONFIG_KEYS)}")
    if not timm.is_model(name) and not name.startswith("hf-hub:"):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise StarfishError(f"unknown model {name!r}: set model.name to a timm model name{hint}")
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise StarfishError(f"model.checkpoint_path {str(path)!r} does not exist: give the path of a weights file")
        # the user's own overlay (e.g. mean/std) stays: the file is added to it; the file's class count
        # is the model's, or timm would drop its classifier as one for other classes
        overlay = {**dict(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(path)}
        if "num_classes" in kwargs:
            overlay["num_classes"] = kwargs["num_classes"]
        kwargs["pretrained_cfg_overlay"] = overlay
        pretrained = True
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError, ValueError, TypeError, KeyError, SafetensorError) as error:
        if pretrained and not checkpoint_path:
            raise StarfishError(
                f"could not load pretrained weights for {name!r} ({_first_line(error)}): check network access "
                "to the HF hub, or set model.checkpoint_path=FILE or model.pretrained=false"
            ) from error
        raise StarfishError(f"could not build model {name!r}: {_first_line(error)}") from error
    return _match_data_config(model, data_config).eval()


def _match_data_config(model: nn.Module, data_config: dict[str, Any]) -> nn.Module:
    """Make the timm data config describe the model as built: its input size (e.g. after kwargs
    img_size=…), mean and std with one value per input channel (a greyscale model built from an RGB
    config gets the channel average, as timm averages a pretrained first conv), then the user's
    `data_config` on top."""
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    proj = getattr(patch_embed, "proj", None)
    config = dict(getattr(model, "pretrained_cfg", {}) or {})
    if img_size and isinstance(proj, nn.Conv2d):
        channels = proj.in_channels
        config["input_size"] = (channels, *img_size)
        for key in ("mean", "std"):
            values = tuple(config.get(key) or ())
            if values and len(values) != channels:
                config[key] = (sum(values) / len(values),) * channels
    for key, value in data_config.items():
        if key in ("mean", "std"):
            value = tuple(float(v) for v in (value if isinstance(value, list | tuple) else [value]))
            channels = int(config.get("input_size", (len(value),))[0])
            if len(value) not in (1, channels):
                raise StarfishError(f"model.data_config.{key} has {len(value)} values for a {channels}-channel model")
            value = value * channels if len(value) == 1 else value
        config[key] = tuple(value) if isinstance(value, list) else value
    model.pretrained_cfg = config
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


@register_family
class VisionTransformerStructure(ModelStructure):
    """A timm ViT: `blocks` (pre-norm residual blocks with `attn` and `mlp`), prefix tokens
    (class/distillation/register tokens) before the patch tokens, and `forward_intermediates`."""

    family = "vision"
    description = "timm vision transformer (ViT/DeiT) with `blocks` and `forward_intermediates`"

    @classmethod
    def fits(cls, model):
        blocks = getattr(model, "blocks", None)
        return isinstance(blocks, nn.Sequential | nn.ModuleList) and hasattr(model, "forward_intermediates")

    @property
    def blocks(self):
        return list(self.model.blocks)

    def block_name(self, index):
        return f"blocks.{index}"

    def forward_with_states(self, inputs):
        """Logits and the output of every block (all tokens, prefix tokens first: N×L×D)."""
        final, intermediates = self.model.forward_intermediates(
            inputs, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=False)
        states = []
        for item in intermediates:
            if isinstance(item, tuple):
                spatial, prefix = item
                item = spatial if prefix is None else torch.cat([prefix, spatial], dim=1)
            states.append(item)
        return self.model.forward_head(final), states

    def embed(self, inputs):
        model = self.model  # the steps of timm's forward_features before its blocks
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(inputs))))

    def head(self, last_state):
        return self.model.forward_head(self.model.norm(last_state))

    def branch_modules(self, kind):
        if kind == "final_norm":  # the norm that feeds the head: `norm`, or `fc_norm` in average-pooled models
            norm = getattr(self.model, "norm", None)
            if norm is None or isinstance(norm, nn.Identity):
                norm = getattr(self.model, "fc_norm", None)
            return [norm]
        return [getattr(block, kind) for block in self.blocks]

    def state_size(self):
        tokens = int(self.model.patch_embed.num_patches) + int(getattr(self.model, "num_prefix_tokens", 0))
        return tokens, int(self.model.embed_dim)

    def output_size(self):
        return int(self.model.num_classes)
