"""The vision family: timm vision transformers (ViT, DeiT, DeiT3 …) built by name, and their structure."""

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from timm.layers import Attention, Mlp
from torch import nn

from starfish_cli.models.vit_fmnist import PLAIN_TIMM  # importing it registers vit_fmnist with timm
from starfish_cli.runtime.errors import StarfishError, first_line
from starfish_cli.models.base import ModelStructure, Units, register_family
from starfish_cli.models.slicing import slice_units


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
                f"could not load pretrained weights for {name!r} ({first_line(error)}): check network access "
                "to the HF hub, or set model.checkpoint_path=FILE or model.pretrained=false"
            ) from error
        raise StarfishError(f"could not build model {name!r}: {first_line(error)}") from error
    return _match_data_config(model, data_config).eval()


def model_transform(model: nn.Module) -> Callable:
    """The model's own evaluation preprocessing (timm data config → transform)."""
    config = timm.data.resolve_data_config(model=model)
    return timm.data.create_transform(**config, is_training=False)


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


@register_family
class VisionTransformerStructure(ModelStructure):
    """A timm ViT: `blocks` (pre-norm residual blocks with `attn` and `mlp`), prefix tokens
    (class/distillation/register tokens) before the patch tokens, and `forward_intermediates`."""

    family = "vision"
    description = "timm vision transformer (ViT/DeiT) with `blocks` and `forward_intermediates`"
    exports_onnx = True
    build = staticmethod(build_model)

    @classmethod
    def offline_config(cls, model_config, recorded):
        config = {**model_config, "pretrained": False, "checkpoint_path": None}
        if recorded.get("data_config") is not None:  # the preprocessing the model was exported with
            config["data_config"] = recorded["data_config"]
        return config

    def recorded(self):
        """The preprocessing keys of the model's timm `pretrained_cfg`, as build_model's `data_config`."""
        config = getattr(self.model, "pretrained_cfg", {}) or {}
        return {"data_config": {key: config[key] for key in DATA_CONFIG_KEYS if config.get(key) is not None}}

    @classmethod
    def fits(cls, model):
        blocks = getattr(model, "blocks", None)
        return isinstance(blocks, nn.Sequential | nn.ModuleList) and hasattr(model, "forward_intermediates")

    @property
    def blocks(self):
        return list(self.model.blocks)

    def block_name(self, index):
        return f"blocks.{index}"

    def forward_with_states(self, inputs, with_outputs=True):
        """Outputs and the output of every block (all tokens, prefix tokens first: N×L×D): the steps of
        timm's forward_intermediates, without its split of the prefix tokens that would be joined again."""
        states, state = [], self.embed(inputs)
        for block in self.model.blocks:
            state = block(state)
            states.append(state)
        return (self.head(state) if with_outputs else None), states

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

    # ---- data: images in the model's own preprocessing
    modality = "images"

    def preprocessing(self):
        channels = int(timm.data.resolve_data_config(model=self.model)["input_size"][0])
        return {"transform": model_transform(self.model), "channels": channels}

    # ---- the hub format: timm's own save_for_hf folder (config.json + model.safetensors)
    hub_library = "timm"
    hub_pipeline = "image-classification"

    def save_for_hub(self, folder, dtype):
        """timm's `save_for_hf`; a model that only starfish registers (vit_fmnist) is written as the timm
        built-in of the same class with arguments that rebuild its shape, so plain timm builds it."""
        architecture = self.model.pretrained_cfg.get("architecture")
        saved = copy.deepcopy(self.model).to(dtype)  # save_for_hf writes the state_dict as it is
        # the arguments it was created with, less a local checkpoint's overlay, which names its file and
        # would replace the folder's own on loading
        saved._model_args = {key: value for key, value in getattr(saved, "_model_args", {}).items()
                             if key != "pretrained_cfg_overlay"}
        model_config, model_args = {}, {}
        if architecture in PLAIN_TIMM:
            stand_in, arguments = PLAIN_TIMM[architecture]
            model_config, model_args = {"pretrained_cfg": {"architecture": stand_in}}, {**arguments, **saved._model_args}
        elif not timm.models.model_entrypoint(architecture).__module__.startswith("timm."):
            raise StarfishError(f"export.format=hf: {architecture} is registered outside timm, which plain timm "
                                "cannot build: use export.format=safetensors and starfish_cli.load")
        try:
            timm.models.save_for_hf(saved, str(folder), model_config=model_config, model_args=model_args,
                                    safe_serialization=True)
        except (ValueError, TypeError) as error:  # e.g. an argument that JSON cannot hold
            raise StarfishError(f"export.format=hf: timm cannot write {architecture}'s config "
                                f"({first_line(error)}): use export.format=safetensors") from error

    @classmethod
    def load_from_hub(cls, folder):
        return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()

    def hub_base_model(self, model_config):
        if model_config.get("checkpoint_path"):
            return None
        return (getattr(self.model, "pretrained_cfg", {}) or {}).get("hf_hub_id") or None

    def random_inputs(self, count, seed=0):
        size = timm.data.resolve_data_config(model=self.model)["input_size"]
        return torch.randn(count, *size, generator=torch.Generator().manual_seed(seed))

    # ---- structured pruning: heads and MLP neurons sliced out of timm's Attention and Mlp
    def units(self, index):
        attn, mlp = _sliceable(self.blocks[index], self.block_name(index))
        name = self.block_name(index)
        head_rows = torch.arange(attn.attn_dim).reshape(attn.num_heads, attn.head_dim)  # (heads × head_dim)
        # qkv's output is (q, k, v) × heads × head_dim: a head owns head_dim rows of each of q, k and v
        qkv_rows = torch.cat([head_rows + part * attn.attn_dim for part in range(3)], dim=1)
        heads_rows = {f"{name}.attn.qkv": qkv_rows}
        if getattr(attn, "gate", None) is not None:
            heads_rows[f"{name}.attn.gate"] = head_rows
        neurons = torch.arange(mlp.fc1.out_features).unsqueeze(1)
        return {
            "heads": Units(attn.num_heads, heads_rows, {f"{name}.attn.proj": head_rows}),
            "neurons": Units(mlp.fc1.out_features, {f"{name}.mlp.fc1": neurons}, {f"{name}.mlp.fc2": neurons}),
        }

    def remove_units(self, index, heads=(), neurons=()):
        attn, _mlp = _sliceable(self.blocks[index], self.block_name(index))
        modules = dict(self.blocks[index].named_modules(prefix=self.block_name(index)))
        slice_units(self.units(index), modules, {"heads": heads, "neurons": neurons}, self.block_name(index))
        # timm's forward reshapes by these: fewer heads of the same head_dim (so `scale` stays head_dim**-0.5)
        attn.num_heads = attn.qkv.out_features // (3 * attn.head_dim)
        attn.attn_dim = attn.num_heads * attn.head_dim

    def block_sizes(self):
        return {self.block_name(index): {"heads": int(block.attn.num_heads), "mlp_hidden": int(block.mlp.fc1.out_features)}
                for index, block in enumerate(self.blocks)}

    def resize(self, structure):
        names = {self.block_name(index): index for index in range(len(self.blocks))}
        for name, sizes in (structure or {}).items():
            if name not in names or not isinstance(sizes, dict) or set(sizes) != {"heads", "mlp_hidden"}:
                raise StarfishError(f"structure entry {name!r}: {sizes!r} does not fit this model's blocks "
                                    f"({', '.join(list(names)[:3])}, …): use the model= config it was pruned with")
            index = names[name]
            counts = {kind: units.count for kind, units in self.units(index).items()}
            wanted = {"heads": sizes["heads"], "neurons": sizes["mlp_hidden"]}
            if not all(isinstance(wanted[kind], int) and 1 <= wanted[kind] <= counts[kind] for kind in counts):
                raise StarfishError(f"structure of {name} ({sizes}) does not fit its {counts['heads']} heads and "
                                    f"{counts['neurons']} MLP neurons: use the model= config it was pruned with")
            self.remove_units(index, heads=range(wanted["heads"], counts["heads"]),
                              neurons=range(wanted["neurons"], counts["neurons"]))


def _sliceable(block: nn.Module, name: str) -> tuple[Attention, Mlp]:
    """The block's timm Attention and Mlp, when slicing them keeps their computation exact."""
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    if type(attn) is not Attention or type(mlp) is not Mlp or not hasattr(attn, "attn_dim"):
        raise StarfishError(f"structured pruning slices timm's Attention and Mlp; {name} has "
                            f"{type(attn).__name__} and {type(mlp).__name__}: choose an unstructured pruner")
    if not isinstance(attn.norm, nn.Identity) or not isinstance(mlp.norm, nn.Identity):
        # a norm over all heads / all neurons changes when some are removed: no exact slicing
        raise StarfishError(f"{name} normalizes across its heads or neurons (scale_attn_norm/scale_mlp_norm), "
                            "which removing units would change: choose an unstructured pruner")
    return attn, mlp
