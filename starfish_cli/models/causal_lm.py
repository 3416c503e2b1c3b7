"""The causal_lm family: transformers decoder-only language models (any architecture whose decoder layers
form one nn.ModuleList: Llama, Mistral, Qwen, Gemma, Phi, Falcon, GPT-2, OPT, GPT-NeoX, BLOOM, …) built from
a hub id, a save_pretrained folder, a GGUF file or a fetchable model's name, their structure, and text data."""

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from starfish_cli.runtime.errors import StarfishError, first_line
from starfish_cli.models.transformers_library import import_transformers
from starfish_cli.models.base import ModelStructure, register_family
from starfish_cli.models.decoder import branch, context_length, final_norm, find_decoder, has_attention
from starfish_cli.models.experts import fused_state_dict, keep_routers_dense, unfuse_experts
from starfish_cli.models.gguf import FETCHABLE, converted_folder, fetched_folder, is_gguf
from starfish_cli.models.lm_slicing import describe_in_config, keep_layers, layer_source, layer_units, sliceable
from starfish_cli.models.slicing import slice_units

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# the language models shipped in the package, by the model.name that loads them (docs/reference_models.md)
EMBEDDED = {"lm_reference": ASSETS / "lm_reference", "lm_medium": ASSETS / "lm_medium"}
REFERENCE_NAME = "lm_reference"
REFERENCE_DIR = EMBEDDED[REFERENCE_NAME]
DEFAULT_WINDOW = 2048  # tokens per window where the user gives none (WikiText-2 and C4 papers use 2,048)


def model_source(name: str) -> str:
    """Where `name` loads from: an embedded model's folder, a local folder, or a hub id; a GGUF file and a
    fetchable model (models.gguf) load from the save_pretrained folder they are converted into once."""
    if name in EMBEDDED:
        return str(EMBEDDED[name])
    if name in FETCHABLE:
        return str(fetched_folder(name))
    path = Path(name).expanduser()
    if is_gguf(name):
        return str(converted_folder(path))
    return str(path) if path.exists() else name


def build_model(name: str = REFERENCE_NAME, pretrained: bool = True, revision: str | None = None,
                prune_router: bool = False) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained(name)` in float32 and eval mode (`pretrained=false`: its
    architecture, randomly initialized), with GPT-2's Conv1D layers turned into nn.Linear (the same
    function, weight transposed) and fused MoE experts into one nn.Linear per expert matrix, so every
    pruner sees (out × in) matrices; MoE routers stay dense unless `prune_router`."""
    transformers = import_transformers()
    transformers.utils.logging.disable_progress_bar()  # loading bars are noise on the console
    source = model_source(name)
    path = Path(source)
    if path.exists() and not (path / "config.json").is_file():
        raise StarfishError(f"model.name={name!r} is a folder without config.json: give a folder written by "
                            "save_pretrained, or a hub id")
    try:
        if pretrained:
            model = transformers.AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=torch.float32)
        else:
            config = transformers.AutoConfig.from_pretrained(source, revision=revision)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise StarfishError(f"could not load causal LM {name!r} ({first_line(error, 160)}): give a folder "
                            "written by save_pretrained, a .gguf file, or a hub id with network access") from error
    _check_decoder(model, name)
    _linear_from_conv1d(model, transformers)
    layers = find_decoder(model).layers
    unfuse_experts(model, layers)
    keep_routers_dense(model, layers, prune_router)
    return model.eval()


def _check_decoder(model: nn.Module, name: str) -> None:
    decoder = find_decoder(model)
    if decoder is None or not any(has_attention(layer) for layer in decoder.layers):
        raise StarfishError(f"{type(model).__name__} ({name}) has no attention decoder layers: starfish prunes "
                            "transformers (state-space models such as Mamba are not supported)")


def load_tokenizer(model: nn.Module):
    transformers = import_transformers()
    source = model.config.name_or_path  # the folder or hub id it was loaded from: its tokenizer is there
    try:
        return transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as error:
        raise StarfishError(f"no tokenizer with the model at {source!r}: save one beside it "
                            "(tokenizer.save_pretrained(DIR))") from error


def _linear_from_conv1d(model: nn.Module, transformers) -> None:
    conv1d = transformers.pytorch_utils.Conv1D
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, conv1d):  # y = x·W + b with W (in × out)
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1], device=child.weight.device)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)


class _Stop(Exception):
    """Raised by a hook to end a forward pass at the first decoder layer."""


def _tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@register_family
class CausalLMStructure(ModelStructure):
    """A transformers causal LM: token ids (batch × tokens) in, logits (batch × tokens × vocab) out;
    blocks are its decoder layers, whose every nn.Linear is prunable; embeddings, norms and the LM
    head stay dense. Running a layer on its own takes what the model hands every layer (rotary
    position embeddings, the causal mask): captured once per input shape from the model itself."""

    family = "causal_lm"
    description = "transformers decoder-only LM (attention layers in one nn.ModuleList)"
    metric = "perplexity"
    uniform_units = True
    removes_blocks = True
    generates = True
    build = staticmethod(build_model)

    def __init__(self, model):
        super().__init__(model)
        self._layer_arguments: dict[tuple, tuple[tuple, dict]] = {}
        self._decoder = find_decoder(model)  # looked up once: `blocks` is read on every step and every layer run

    @classmethod
    def fits(cls, model):
        return hasattr(model, "get_output_embeddings") and hasattr(model, "config") and find_decoder(model) is not None

    @property
    def blocks(self):
        return list(self._decoder.layers)

    def block_name(self, index):
        return f"{self._decoder.layers_name}.{index}"

    def context(self) -> int | None:
        """The longest input the model takes; None for models without a limit (ALiBi)."""
        return context_length(self.model.config)

    def window(self) -> int:
        """The default window of calibration and evaluation: the context, at most 2,048 tokens (the field's)."""
        return min(self.context() or DEFAULT_WINDOW, DEFAULT_WINDOW)

    def outputs(self, inputs):
        return self.model(input_ids=inputs, use_cache=False).logits

    def forward_with_states(self, inputs, with_outputs=True):
        states: list[torch.Tensor] = []
        last = len(self.blocks) - 1

        def keep(index, output):
            states.append(_tensor(output))
            if index == last and not with_outputs:
                raise _Stop  # the final norm and the LM head (a vocabulary-wide matmul) are not needed

        handles = [block.register_forward_hook(lambda _m, _i, out, index=index: keep(index, out))
                   for index, block in enumerate(self.blocks)]
        logits = None
        try:
            logits = self.outputs(inputs)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return logits, states

    def embed(self, inputs):
        captured = {}

        def stop(_module, args, kwargs):
            captured["hidden"], captured["args"], captured["kwargs"] = args[0], args[1:], kwargs
            raise _Stop

        handle = self.blocks[0].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.outputs(inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
        hidden = captured["hidden"]
        # what every layer receives depends only on the input's shape (no padding, no cache)
        self._layer_arguments[(tuple(hidden.shape[:2]), hidden.device)] = (captured["args"], captured["kwargs"])
        return hidden

    def run_block(self, index, block_input):
        key = (tuple(block_input.shape[:2]), block_input.device)
        if key not in self._layer_arguments:
            self.embed(torch.zeros(block_input.shape[:2], dtype=torch.long, device=block_input.device))
        args, kwargs = self._layer_arguments[key]
        return _tensor(self.blocks[index](block_input, *args, **kwargs))

    def first_block_inputs(self, batches):
        with torch.no_grad():
            return [self.embed(inputs) for inputs in batches]

    def _final_norm(self) -> nn.Module:
        norm = final_norm(self._decoder)
        if norm is None:
            raise StarfishError(f"{type(self.model).__name__} has no final norm starfish can find: "
                                "use healer.states=[blocks] without kd_weight")
        return norm

    def head(self, last_state):
        hidden = self._final_norm()(last_state)
        project_out = getattr(self._decoder.owner, "project_out", None)  # OPT-350m's narrower head
        return self.model.get_output_embeddings()(project_out(hidden) if project_out is not None else hidden)

    def branch_modules(self, kind):
        if kind == "final_norm":
            return [self._final_norm()]
        modules = [branch(block, kind) for block in self.blocks]
        if any(module is None for module in modules):
            raise StarfishError(f"the layers of {type(self.model).__name__} have no separate {kind} module: "
                                "use healer.states=[blocks]")
        return modules

    def state_size(self):
        return self.window(), int(self.model.config.hidden_size)

    def output_size(self):
        return self.window() * int(self.model.get_output_embeddings().out_features)

    def block_norm_names(self):
        """Weights and biases of the norms inside the decoder layers (LayerNorm or RMSNorm)."""
        names = []
        for index, block in enumerate(self.blocks):
            for module_name, module in block.named_modules():
                if isinstance(module, nn.LayerNorm | nn.RMSNorm) or type(module).__name__.endswith("RMSNorm"):
                    names += [f"{self.block_name(index)}.{module_name}.{p}"
                              for p, value in module.named_parameters(recurse=False) if value is not None]
        return names

    # ---- data: token windows of a text dataset
    modality = "text"

    def preprocessing(self):
        return {"tokenizer": load_tokenizer(self.model), "context": self.context(), "window": self.window()}

    # ---- the hub format: transformers' own save_pretrained folder, with the tokenizer
    hub_library = "transformers"
    hub_pipeline = "text-generation"
    hub_config_has_sizes = True  # intermediate_size, heads, KV heads, head_dim and layers (models.lm_slicing)

    def save_for_hub(self, folder, dtype):
        """`save_pretrained` of the architecture built afresh from the model's config, holding these weights
        (GPT-2's Conv1D layers, which `build_model` turned into nn.Linear, get their (in × out) weights
        back), and the tokenizer beside it: `AutoModelForCausalLM.from_pretrained(folder)` needs nothing else."""
        transformers = import_transformers()
        fresh = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(self.model.config), dtype=torch.float32)
        conv1d = {name for name, module in fresh.named_modules() if isinstance(module, transformers.pytorch_utils.Conv1D)}
        weights = {name: tensor.T if name.removesuffix(".weight") in conv1d else tensor
                   for name, tensor in fused_state_dict(self.model).items()}
        fresh.load_state_dict(weights)
        fresh.to(dtype).save_pretrained(folder)
        load_tokenizer(self.model).save_pretrained(folder)

    @classmethod
    def load_from_hub(cls, folder):
        return import_transformers().AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def hub_base_model(self, model_config):
        name = str(model_config.get("name", REFERENCE_NAME))
        if name in FETCHABLE:
            return FETCHABLE[name].origin
        return None if name in EMBEDDED or Path(name).expanduser().exists() else name

    # ---- structured pruning: KV groups, MLP channels and whole decoder layers (models.lm_slicing)
    def units(self, index):
        return layer_units(self.blocks[index], self.block_name(index))

    def remove_units(self, index, heads=(), neurons=()):
        layer = self.blocks[index]
        modules = dict(layer.named_modules(prefix=self.block_name(index)))
        slice_units(self.units(index), modules, {"heads": heads, "neurons": neurons}, self.block_name(index))
        describe_in_config(self.model.config, sliceable(layer, self.block_name(index)))

    def check_kept_units(self, kept):
        config, group = self.model.config, sliceable(self.blocks[0], self.block_name(0))
        sizes = group.sizes()
        heads = kept["heads"] * sizes["heads"] // sizes["kv_heads"]  # query heads: whole groups stay
        if config.hidden_size % heads:
            valid = [f"{(sizes['kv_heads'] - k) / sizes['kv_heads']:.3g}" for k in range(1, sizes["kv_heads"])
                     if config.hidden_size % (k * sizes["heads"] // sizes["kv_heads"]) == 0]
            raise StarfishError(f"pruner.heads keeps {heads} of {sizes['heads']} attention heads, and transformers "
                                f"requires hidden_size ({config.hidden_size}) to be a multiple of the head count: "
                                f"choose pruner.heads in {', '.join(['0', *sorted(valid)])}")

    def remove_blocks(self, removed):
        removed = {int(index) for index in removed}
        if removed - set(range(len(self.blocks))) or len(removed) >= len(self.blocks):
            raise StarfishError(f"cannot remove decoder layers {sorted(removed)} of {len(self.blocks)}: "
                                "at least one stays")
        kept = [index for index in range(len(self.blocks)) if index not in removed]
        owner_name, _, attribute = self._decoder.layers_name.rpartition(".")
        owner = self.model.get_submodule(owner_name) if owner_name else self.model
        setattr(owner, attribute, keep_layers(self.model.config, self._decoder.layers, kept))
        self._decoder = find_decoder(self.model)
        self._layer_arguments.clear()  # what a layer receives may depend on the layer count (per-layer masks)

    def block_sources(self):
        return [layer_source(layer, index) for index, layer in enumerate(self.blocks)]

    def block_sizes(self):
        try:
            parts = [sliceable(layer, self.block_name(index)) for index, layer in enumerate(self.blocks)]
        except StarfishError:
            return None  # layers structured pruning cannot slice: nothing to record
        return {self.block_name(index): {**part.sizes(), "source": source}
                for index, (part, source) in enumerate(zip(parts, self.block_sources()))}

    def resize(self, structure):
        if not structure:
            return
        entries = list(structure.values())
        keys = {"heads", "kv_heads", "mlp_hidden", "source"}
        if any(not isinstance(sizes, dict) or set(sizes) != keys for sizes in entries):
            raise StarfishError(f"structure {entries[0]!r} does not describe decoder layers ({', '.join(sorted(keys))}): "
                                "use the model= config it was pruned with")
        self.remove_blocks(set(range(len(self.blocks))) - {sizes["source"] for sizes in entries})
        for index, sizes in enumerate(entries):
            counts = {kind: units.count for kind, units in self.units(index).items()}
            if not (1 <= sizes["kv_heads"] <= counts["heads"] and 1 <= sizes["mlp_hidden"] <= counts["neurons"]):
                raise StarfishError(f"structure of {self.block_name(index)} ({sizes}) does not fit its {counts['heads']} "
                                    f"KV heads and {counts['neurons']} MLP channels: use the model= config it was pruned with")
            self.remove_units(index, heads=range(sizes["kv_heads"], counts["heads"]),
                              neurons=range(sizes["mlp_hidden"], counts["neurons"]))

    def random_inputs(self, count, seed=0):
        vocabulary = int(self.model.get_input_embeddings().num_embeddings)
        return torch.randint(vocabulary, (count, min(self.window(), 64)), generator=torch.Generator().manual_seed(seed))
