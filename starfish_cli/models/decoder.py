"""Where the parts of a transformers decoder-only model are, found from transformers' own description of
the model (`base_model`, `_no_split_modules`, the config's attribute map) rather than a list of names:
the decoder layers, the final norm, the attention and MLP of each layer, and the context length."""

from dataclasses import dataclass

from torch import nn

NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm", "norm_f")
ATTENTION_NAMES = ("self_attn", "attn", "self_attention", "attention", "mixer")
MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn")
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")


@dataclass(frozen=True)
class Decoder:
    """The decoder layers (one nn.ModuleList) of a causal LM, where they are, and what holds them."""

    layers_name: str  # the list's full module name, e.g. "model.layers", "model.decoder.layers", "gpt_neox.layers"
    layers: nn.ModuleList
    owner: nn.Module  # the module whose child the list is (it holds the final norm too)


def is_norm(module: nn.Module | None) -> bool:
    return isinstance(module, nn.LayerNorm | nn.RMSNorm) or type(module).__name__.endswith(("Norm", "LayerNorm"))


def has_attention(layer: nn.Module) -> bool:
    return any("Attention" in type(module).__name__ for module in layer.modules())


def find_decoder(model: nn.Module) -> Decoder | None:
    """The model's decoder layers: the nn.ModuleList of the classes transformers never splits across devices
    (`_no_split_modules`, the layer classes), or, for a model that names none, the largest list of modules
    of one class; None when the model has no such list."""
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    modules = dict(model.named_modules())
    candidates = []
    for name, module in modules.items():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        # by class or base class: a wrapper subclasses the layer's class (FSDP2's FSDPLlamaDecoderLayer)
        named = all(any(cls.__name__ in layer_classes for cls in type(layer).__mro__) for layer in module)
        if named if layer_classes else len({type(layer) for layer in module}) == 1:
            candidates.append((name, module))
    if not candidates:
        return None
    # several lists (a model naming no layer classes): the one holding the most parameters
    name, layers = max(candidates, key=lambda candidate: sum(p.numel() for p in candidate[1].parameters())) \
        if len(candidates) > 1 else candidates[0]
    owner = modules[name.rpartition(".")[0]] if "." in name else model
    return Decoder(name, layers, owner)


def final_norm(decoder: Decoder) -> nn.Module | None:
    """The norm after the last layer: a norm child of the layers' owner with one of the usual names, else its
    only norm child registered after the layers (BLOOM's owner has an embedding norm before them)."""
    children = list(decoder.owner.named_children())
    for name in NORM_NAMES:
        if is_norm(getattr(decoder.owner, name, None)):
            return getattr(decoder.owner, name)
    after = [module for name, module in children[[m for _, m in children].index(decoder.layers) + 1:]
             if is_norm(module)]
    return after[0] if len(after) == 1 else None


def named_branch(layer: nn.Module, kind: str) -> tuple[str, nn.Module | None]:
    """A layer's attention (`attn`) or MLP (`mlp`) module by its usual name, with that name (("", None) where the
    layer has no such module, e.g. OPT's fc1/fc2 directly in the layer)."""
    for name in ATTENTION_NAMES if kind == "attn" else MLP_NAMES:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return name, module
    return "", None


def branch(layer: nn.Module, kind: str) -> nn.Module | None:
    """A layer's attention or MLP module (`named_branch` without the name)."""
    return named_branch(layer, kind)[1]


def context_length(config) -> int | None:
    """The longest input the model was built for, from whichever field its config uses; None for models
    without one (ALiBi, e.g. BLOOM): their windows come from calib.seq_len and eval.seq_len."""
    for field in CONTEXT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
