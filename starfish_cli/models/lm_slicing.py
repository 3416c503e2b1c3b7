"""Structured pruning of transformers decoder layers: whole KV groups of attention heads, MLP channels and
whole layers sliced out, with the config rewritten to the new sizes, so that `save_pretrained` writes a model
that plain `AutoModelForCausalLM.from_pretrained` builds at its smaller size.

It slices the Llama layout that Llama, Mistral, Qwen2/3 and Gemma share: `q_proj`, `k_proj`, `v_proj`,
`o_proj` in the attention and `gate_proj`, `up_proj`, `down_proj` in the MLP. A unit of attention is one
key/value head with the query heads that share it (grouped-query attention repeats each KV head for a run
of consecutive query heads), so the group size, and the attention's `num_key_value_groups`, never change.
Every layer keeps the same sizes: one `intermediate_size`, `num_attention_heads` and `num_key_value_heads`
describe the model.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from starfish_cli.models.base import Units
from starfish_cli.models.decoder import named_branch
from starfish_cli.runtime.errors import StarfishError

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
SOURCE_ATTRIBUTE = "starfish_source"  # on a decoder layer: the dense model's index of the layer it is


@dataclass(frozen=True)
class SliceableLayer:
    """A decoder layer's attention and MLP, and their module names relative to the layer."""

    attention_name: str
    attention: nn.Module
    mlp_name: str
    mlp: nn.Module

    @property
    def head_dim(self) -> int:
        return int(self.attention.head_dim)

    def sizes(self) -> dict[str, int]:
        """The layer's current heads, KV heads and MLP channels."""
        return {"heads": self.attention.q_proj.out_features // self.head_dim,
                "kv_heads": self.attention.k_proj.out_features // self.head_dim,
                "mlp_hidden": self.mlp.gate_proj.out_features}


def sliceable(layer: nn.Module, name: str) -> SliceableLayer:
    """The layer's attention and MLP when they have the Llama layout (one line naming what it has otherwise)."""
    attention_name, attention = named_branch(layer, "attn")
    mlp_name, mlp = named_branch(layer, "mlp")
    has = (attention is not None and hasattr(attention, "head_dim")
           and all(isinstance(getattr(attention, p, None), nn.Linear) for p in ATTENTION_PROJECTIONS)
           and mlp is not None and all(isinstance(getattr(mlp, p, None), nn.Linear) for p in MLP_PROJECTIONS))
    if not has:
        raise StarfishError(f"pruner=structured slices Llama-style decoder layers (q/k/v/o_proj, gate/up/down_proj: "
                            f"Llama, Mistral, Qwen2/3, Gemma); {name} is {type(layer).__name__} with "
                            f"{type(attention).__name__} and {type(mlp).__name__}: choose an unstructured pruner")
    return SliceableLayer(attention_name, attention, mlp_name, mlp)


def layer_units(layer: nn.Module, name: str) -> dict[str, Units]:
    """The removable units of decoder layer `name`: KV groups (`heads`) and MLP channels (`neurons`)."""
    parts = sliceable(layer, name)
    sizes, head_dim = parts.sizes(), parts.head_dim
    groups = sizes["kv_heads"]
    query_rows = torch.arange(sizes["heads"] * head_dim).reshape(groups, -1)  # a group's query heads are consecutive
    key_rows = torch.arange(groups * head_dim).reshape(groups, head_dim)
    attention, mlp = f"{name}.{parts.attention_name}", f"{name}.{parts.mlp_name}"
    channels = torch.arange(sizes["mlp_hidden"]).unsqueeze(1)
    return {
        "heads": Units(groups, {f"{attention}.q_proj": query_rows, f"{attention}.k_proj": key_rows,
                                f"{attention}.v_proj": key_rows}, {f"{attention}.o_proj": query_rows}),
        "neurons": Units(sizes["mlp_hidden"], {f"{mlp}.gate_proj": channels, f"{mlp}.up_proj": channels},
                         {f"{mlp}.down_proj": channels}),
    }


def describe_in_config(config, layer: SliceableLayer) -> None:
    """Write a (uniformly) sliced layer's sizes into the model config, which every layer shares: what
    `save_pretrained` writes and `from_pretrained` builds. `head_dim` is written out, since it no longer
    follows from hidden_size / num_attention_heads."""
    sizes = layer.sizes()
    config.head_dim = layer.head_dim
    config.num_attention_heads = sizes["heads"]
    config.num_key_value_heads = sizes["kv_heads"]
    config.intermediate_size = sizes["mlp_hidden"]


def keep_layers(config, layers: nn.ModuleList, kept: Sequence[int]) -> nn.ModuleList:
    """A list of the `kept` decoder layers, each numbered by its new place (the KV cache is indexed by
    `layer_idx`) and remembering its dense index; the config's layer count and per-layer types follow."""
    chosen = nn.ModuleList([layers[index] for index in kept])
    for number, (index, layer) in enumerate(zip(kept, chosen)):
        setattr(layer, SOURCE_ATTRIBUTE, getattr(layer, SOURCE_ATTRIBUTE, index))
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = number
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[index] for index in kept]
    return chosen


def layer_source(layer: nn.Module, index: int) -> int:
    """The dense model's index of the decoder layer now at `index`."""
    return int(getattr(layer, SOURCE_ATTRIBUTE, index))
