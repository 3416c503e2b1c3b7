"""Mixture-of-experts layers made prunable: transformers keeps an MoE layer's experts as fused 3-D
parameters (`gate_up_proj` E × 2I × H, `down_proj` E × H × I), which no pruner sees as layers. `unfuse_experts`
replaces them with one nn.Linear per expert matrix, computing the same function, so every pruner prunes each
expert's matrix as a layer of its own and its calibration hooks see only the tokens routed to that expert;
`fused_state_dict` gives the weights back in transformers' layout. Routers stay dense unless asked."""

import torch
from torch import nn

from starfish_cli.models.base import KeptDense
from starfish_cli.runtime.errors import StarfishError

ROUTER_NAMES = ("gate", "router", "shared_expert_gate")  # an MoE block's routing layers, beside its `experts`


class ExpertLinears(nn.Module):
    """An MoE layer's experts as `gate_up[e]` (H → 2I) and `down[e]` (I → H) linears: expert e maps the tokens
    routed to it to down(act(gate) · up), weighted by their routing weight, as transformers' eager experts do."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, act_fn: nn.Module):
        super().__init__()
        self.num_experts = num_experts
        self.gate_up = nn.ModuleList(nn.Linear(hidden, 2 * intermediate, bias=False) for _ in range(num_experts))
        self.down = nn.ModuleList(nn.Linear(intermediate, hidden, bias=False) for _ in range(num_experts))
        self.act_fn = act_fn

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        output = torch.zeros_like(hidden_states)
        for expert in torch.unique(top_k_index).tolist():  # ascending, as transformers' loop over hit experts
            if expert >= self.num_experts:  # an index some routers use for "no expert"
                continue
            slot, token = torch.where(top_k_index.T == expert)  # transformers' order: by slot, then token
            gate, up = self.gate_up[expert](hidden_states[token]).chunk(2, dim=-1)
            routed = self.down[expert](self.act_fn(gate) * up) * top_k_weights[token, slot, None]
            output.index_add_(0, token, routed.to(output.dtype))
        return output


def _is_fused(module: nn.Module) -> bool:
    return any(parameter.dim() >= 3 for parameter in module.parameters(recurse=False))


def _unfused(module: nn.Module) -> ExpertLinears | None:
    """The per-expert copy of a fused experts module of the usual layout, None for any other layout."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    others = {name for name, _ in module.named_parameters(recurse=False)} - {"gate_up_proj", "down_proj"}
    if not (isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter)) or others \
            or gate_up.dim() != 3 or down.dim() != 3 or not isinstance(getattr(module, "act_fn", None), nn.Module):
        return None
    experts, double, hidden = gate_up.shape
    if double % 2 or tuple(down.shape) != (experts, hidden, double // 2):
        return None
    unfused = ExpertLinears(experts, hidden, double // 2, module.act_fn).to(gate_up.device, gate_up.dtype)
    with torch.no_grad():
        for expert in range(experts):
            unfused.gate_up[expert].weight.copy_(gate_up[expert])
            unfused.down[expert].weight.copy_(down[expert])
    return unfused


@torch.no_grad()
def _computes_the_same(fused: nn.Module, unfused: ExpertLinears) -> bool:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(24, unfused.gate_up[0].in_features, generator=generator).to(unfused.gate_up[0].weight)
    chosen = min(2, unfused.num_experts)
    index = torch.stack([torch.randperm(unfused.num_experts, generator=generator)[:chosen] for _ in range(24)])
    weights = torch.rand(24, chosen, generator=generator).softmax(-1).to(hidden)
    try:
        expected = fused(hidden, index, weights)
    except (TypeError, RuntimeError, ValueError):
        return False
    return torch.allclose(unfused(hidden, index, weights), expected, rtol=1e-4, atol=1e-5)


def unfuse_experts(model: nn.Module, layers: nn.ModuleList) -> int:
    """Replace every fused experts module in `layers` by its ExpertLinears (checked to compute the same on
    random routing); a fused parameter of any other layout is refused in one line, never left silently dense.
    Returns how many were replaced."""
    replaced = 0
    for layer in layers:
        for parent in list(layer.modules()):
            for child_name, child in list(parent.named_children()):
                if not _is_fused(child):
                    continue
                unfused = _unfused(child)
                if unfused is None or not _computes_the_same(child, unfused):
                    raise StarfishError(f"{type(model).__name__} keeps its experts ({type(child).__name__}) in a layout "
                                        "starfish cannot prune yet (only gate_up_proj E×2I×H with down_proj E×H×I)")
                setattr(parent, child_name, unfused)
                replaced += 1
    return replaced


def routers(layers: nn.ModuleList) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, module) of each routing layer: an MoE block's `gate`/`router`/`shared_expert_gate`, or a
    module whose class says it is a router, beside the block's experts."""
    found = []
    for layer in layers:
        for parent in layer.modules():
            if not hasattr(parent, "experts"):
                continue
            for name, child in parent.named_children():
                if name in ROUTER_NAMES or "Router" in type(child).__name__:
                    found.append((parent, name, child))
    return found


def keep_routers_dense(model: nn.Module, layers: nn.ModuleList, prune_router: bool) -> None:
    """Routers stay dense (the MoE pruning literature's default): their linear layers are marked KeptDense.
    `prune_router` prunes instead those that are linear layers (a router holding a bare weight is never pruned)."""
    found = routers(layers)
    if prune_router:
        if found and not any(isinstance(router, nn.Linear) for _, _, router in found):
            _, name, router = found[0]
            raise StarfishError(f"model.prune_router=true, and no router of {type(model).__name__} is a linear layer "
                                f"({name!r} is a {type(router).__name__}): leave prune_router=false")
        return
    for _, _, router in found:
        if isinstance(router, nn.Linear) and not isinstance(router, KeptDense):
            router.__class__ = _kept_dense(type(router))


_KEPT_DENSE: dict[type, type] = {}


def _kept_dense(cls: type) -> type:
    """A subclass of the router's own class, marked KeptDense: its forward and state dict are unchanged."""
    if cls not in _KEPT_DENSE:
        _KEPT_DENSE[cls] = type(f"Dense{cls.__name__}", (cls, KeptDense), {})
    return _KEPT_DENSE[cls]


def fused_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each ExpertLinears' weights stacked back into transformers' fused
    `gate_up_proj` and `down_proj` parameters."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, ExpertLinears):
            for kind, fused in (("gate_up", "gate_up_proj"), ("down", "down_proj")):
                keys = [f"{name}.{kind}.{expert}.weight" for expert in range(module.num_experts)]
                state[f"{name}.{fused}"] = torch.stack([state.pop(key) for key in keys])
    return state
