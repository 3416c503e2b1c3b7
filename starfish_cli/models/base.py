"""The family seam: a `ModelStructure` answers every architecture question the pipeline asks."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from starfish_cli.runtime.errors import StarfishError

FAMILIES: dict[str, type["ModelStructure"]] = {}  # model.family → its structure, in registration order


def register_family(cls: type["ModelStructure"]) -> type["ModelStructure"]:
    """One entry per family: it builds its models from a model config (`build`) and recognizes them (`fits`)."""
    if cls.family in FAMILIES:
        raise ValueError(f"model family {cls.family!r} is registered twice")
    FAMILIES[cls.family] = cls
    return cls


def family_of(model_config: Mapping[str, Any]) -> type["ModelStructure"]:
    """The family a model config names (`model.family`; vision when it names none)."""
    family = model_config.get("family", "vision")
    if family not in FAMILIES:
        raise StarfishError(f"model.family={family!r} is not a model family: use {', '.join(FAMILIES)}")
    return FAMILIES[family]


def build_model(model_config: Mapping[str, Any]) -> nn.Module:
    """The model a `model:` config node describes, in eval mode, built by its family."""
    options = {key: value for key, value in model_config.items() if key != "family"}
    return family_of(model_config).build(**options)


STRUCTURE_ATTRIBUTE = "_starfish_structure"


def structure_of(model: nn.Module) -> "ModelStructure":
    """The structure of `model`, from the first registered family that recognises it: made once and kept on the
    model (a deep copy of the model carries a copy that points to the copy)."""
    kept = model.__dict__.get(STRUCTURE_ATTRIBUTE)
    if kept is not None and kept.model is model:
        return kept
    for family in FAMILIES.values():
        if family.fits(model):
            structure = family(model)
            model.__dict__[STRUCTURE_ATTRIBUTE] = structure
            return structure
    names = ", ".join(family.description for family in FAMILIES.values())
    raise StarfishError(f"{type(model).__name__} is not a model starfish can prune: choose a {names}")


class KeptDense:
    """Marks a linear layer inside the blocks that pruning leaves alone (an MoE router): not prunable."""


@dataclass(frozen=True)
class Units:
    """The removable units of one kind in one block (attention heads, MLP neurons): which output
    rows and which input columns of the block's prunable layers belong to each unit."""

    count: int
    rows: dict[str, torch.Tensor]  # layer name → (count × rows per unit) row indices
    columns: dict[str, torch.Tensor]  # layer name → (count × columns per unit) column indices


class ModelStructure:
    """A model seen as a stack of blocks whose linear layers are pruned and whose outputs are aligned.

    Subclasses give `fits`, `blocks`, `block_name`, `forward_with_states`, `embed`, `head`,
    `branch_modules`, `state_size` and `output_size`; everything else follows from those. A family
    that prunes structurally also gives `units`, `remove_units`, `block_sizes` and `resize`.
    """

    family = "?"
    description = "?"
    metric = "accuracy"  # what evaluation measures (evaluation.METRICS): top-1 for classifiers
    generates = False  # whether it generates text (its speed is then also prefill and decode tokens/s)
    removes_blocks = False  # whether structured pruning can take whole blocks out (`remove_blocks`)
    uniform_units = False  # whether every block must keep the same sizes (a causal LM: one config describes it)
    exports_onnx = False  # whether `starfish export format=onnx` can trace it (image in, logits out)

    def __init__(self, model: nn.Module):
        self.model = model

    # ---- the registry entry: build and recognize
    @staticmethod
    def build(**options: Any) -> nn.Module:
        """The model of a `model:` config node (without `family`), in eval mode."""
        raise NotImplementedError

    @classmethod
    def offline_config(cls, model_config: Mapping[str, Any], recorded: Mapping[str, Any]) -> dict[str, Any]:
        """The model config that rebuilds a recorded model with random weights and without downloading
        weights (the checkpoint's weights replace them); `recorded` is what an export header adds."""
        return {**model_config, "pretrained": False}

    def recorded(self) -> dict[str, Any]:
        """What an export header records beside the model config so that `offline_config` rebuilds the
        model as it was (a vision model's preprocessing); {} when the config says it all."""
        return {}

    @classmethod
    def fits(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    @property
    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def block_name(self, index: int) -> str:
        """The module name of block `index` (its parameters' names start with it plus a dot)."""
        raise NotImplementedError

    def outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs (logits) for `inputs`."""
        return self.model(inputs)

    def forward_with_states(self, inputs: torch.Tensor, with_outputs: bool = True
                            ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The model's outputs and every block's output (batch × tokens × width). `with_outputs=False`:
        outputs None, and the model's part after its last block (final norm, head) is not run."""
        raise NotImplementedError

    def embed(self, inputs: torch.Tensor) -> Any:
        """What the first block receives for `inputs` (the model up to its first block)."""
        raise NotImplementedError

    def head(self, last_state: Any) -> torch.Tensor:
        """The model's outputs from the last block's output (the model after its last block)."""
        raise NotImplementedError

    def branch_modules(self, kind: str) -> list[nn.Module]:
        """Modules whose outputs are the states of `kind`: `attn` / `mlp` (one per block) or `final_norm`."""
        raise NotImplementedError

    def state_size(self) -> tuple[int, int]:
        """(tokens, width) of one input's block state."""
        raise NotImplementedError

    def output_size(self) -> int:
        """Values per input in the model's output (classes)."""
        raise NotImplementedError

    # ---- data: the family names the kind of data it reads and how to prepare it; the data source makes the items
    modality = "?"  # a data source of the same modality (data.DATASETS entries' `modality`) serves it

    def preprocessing(self) -> dict[str, Any]:
        """What a data source of this modality needs to turn its rows into this model's inputs (the keyword
        arguments of its `calibration_items` and `evaluation_items`)."""
        raise NotImplementedError

    # ---- the ecosystem's own format (`starfish export format=hf`): a folder its library loads without starfish
    hub_library: str | None = None  # the library that loads that folder (a model card's `library_name`)
    hub_pipeline: str | None = None  # the hub's task for it (a model card's `pipeline_tag`)
    hub_config_has_sizes = False  # whether that folder's config carries a structurally pruned model's sizes

    def save_for_hub(self, folder: Path, dtype: torch.dtype) -> None:
        """Write the model (floating-point weights cast to `dtype`) as its own library saves it, with
        what that library needs to rebuild it, so that a Python without starfish loads it."""
        raise StarfishError(f"the {self.family} family has no hub format: use export.format=safetensors")

    @classmethod
    def load_from_hub(cls, folder: Path) -> nn.Module:
        """The model in a `save_for_hub` folder as its library alone loads it, in float32: the check
        that the folder computes what the model does."""
        raise NotImplementedError

    def hub_base_model(self, model_config: Mapping[str, Any]) -> str | None:
        """The hub repository of the dense model it was pruned from; None for a local or embedded one."""
        return None

    def random_inputs(self, count: int, seed: int = 0) -> torch.Tensor:
        """`count` random inputs of the model's kind and size, for checks that a copy computes the same."""
        raise NotImplementedError

    # ---- structured pruning: whole units removed physically
    def units(self, index: int) -> dict[str, Units]:
        """Block `index`'s removable units by kind (`heads`, `neurons`), at its current size."""
        raise StarfishError(f"the {self.family} family cannot remove whole units: choose an unstructured pruner")

    def remove_units(self, index: int, heads: Sequence[int] = (), neurons: Sequence[int] = ()) -> None:
        """Slice the listed units (indices at the block's current size) out of block `index`: the smaller
        block computes what the full one computes when those units' weights are zero."""
        raise StarfishError(f"the {self.family} family cannot remove whole units: choose an unstructured pruner")

    def check_kept_units(self, kept: dict[str, int]) -> None:
        """Refuse, before any unit is scored, sizes (units of each kind kept in every block) the model's own
        library could not describe."""

    def remove_blocks(self, removed: Sequence[int]) -> None:
        """Take blocks `removed` (indices at the current depth) out of the model: each block left is then
        aligned with the dense block it was (`block_sources`)."""
        raise StarfishError(f"the {self.family} family cannot remove whole blocks: leave pruner.layers=0")

    def block_sources(self) -> list[int]:
        """For each block, the index of the dense model's block it was: the blocks themselves until some are
        removed."""
        return list(range(len(self.blocks)))

    def dense_name(self, name: str) -> str:
        """The dense model's name of the module or parameter `name` (its block's index before blocks were removed)."""
        for index, source in enumerate(self.block_sources()):
            prefix = f"{self.block_name(index)}."
            if index != source and name.startswith(prefix):
                return f"{self.block_name(source)}.{name[len(prefix):]}"
        return name

    def block_sizes(self) -> dict[str, dict[str, int]] | None:
        """The current sizes per block name (`{"blocks.0": {"heads": 2, "mlp_hidden": 96}, …}`); None for a
        family that cannot remove units. Compared with the dense model's, it says what structured pruning kept."""
        return None

    def compile_blocks(self) -> None:
        """torch.compile every block in place (the blocks are where the time goes; compiling them one by
        one keeps the model's own forward, hooks and `run_block` working)."""
        for block in self.blocks:
            block.compile()

    def resize(self, structure: dict[str, dict[str, int]]) -> None:
        """Slice a freshly built full-size model to `structure`'s sizes (weights arbitrary), so that the
        weights of a checkpoint with that structure load into it."""
        if structure:
            raise StarfishError(f"the {self.family} family cannot remove whole units: this checkpoint "
                                "was pruned structurally by another family")

    # ---- derived from the above
    def prunable_layers(self) -> dict[str, nn.Linear]:
        """Every linear layer inside the blocks, by full name, in execution order within each block."""
        names = tuple(f"{self.block_name(i)}." for i in range(len(self.blocks)))
        return {name: module for name, module in self.model.named_modules()
                if isinstance(module, nn.Linear) and not isinstance(module, KeptDense) and name.startswith(names)}

    def block_weights(self) -> dict[str, nn.Parameter]:
        """Every weight matrix inside the blocks (2-D or more, prunable or not): what a sparsity that claims
        to cover the blocks must cover."""
        names = tuple(f"{self.block_name(i)}." for i in range(len(self.blocks)))
        return {name: parameter for name, parameter in self.model.named_parameters()
                if parameter.dim() >= 2 and name.startswith(names)}

    def block_layers(self, index: int) -> dict[str, nn.Linear]:
        prefix = f"{self.block_name(index)}."
        return {name: layer for name, layer in self.prunable_layers().items() if name.startswith(prefix)}

    def block_parameter_names(self, names: Iterable[str], index: int) -> list[str]:
        prefix = f"{self.block_name(index)}."
        return [name for name in names if name.startswith(prefix)]

    def block_norm_names(self) -> list[str]:
        """Weights and biases of the LayerNorms inside the blocks."""
        names = []
        for index in range(len(self.blocks)):
            prefix = self.block_name(index)
            for module_name, module in self.blocks[index].named_modules():
                if isinstance(module, nn.LayerNorm):
                    names += [f"{prefix}.{module_name}.{p}" for p, value in module.named_parameters(recurse=False)
                              if value is not None]
        return names

    @torch.no_grad()
    def first_block_inputs(self, batches: Iterable[torch.Tensor]) -> list[Any]:
        """What the first block receives for each batch of inputs (captured with a forward pre-hook)."""
        captured: list[Any] = []
        handle = self.blocks[0].register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        try:
            for inputs in batches:
                self.model(inputs)
        finally:
            handle.remove()
        return captured

    def run_block(self, index: int, block_input: Any) -> Any:
        """Block `index` on one captured input; its output is the next block's input."""
        return self.blocks[index](block_input)
