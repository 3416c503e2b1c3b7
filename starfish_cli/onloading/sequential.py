"""Prune, heal block by block and evaluate a causal LM holding one decoder layer on the device at a time: the
layer's dense weights are read from the checkpoint, pruned, healed towards the dense layer's outputs and
written out before the next is read. What passes between layers is the hidden states of the calibration and
evaluation windows, on the host, as the dense, pruned and healed prefixes make them."""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from starfish_cli.evaluation.metrics import METRICS
from starfish_cli.evaluation.side_by_side import BatchOutputs, Clock, SideBySide
from starfish_cli.evaluation.totals import Totals, reduce_across_ranks
from starfish_cli.healing.base import HealResult, pruned_weight_names
from starfish_cli.healing.blockwise import heal_block
from starfish_cli.models import structure_of
from starfish_cli.healing.states import block_cosine
from starfish_cli.pruning.masks import measure_sparsity
from starfish_cli.onloading.states import HiddenStates
from starfish_cli.onloading.weights import RunWriters, ShardedWeights, offload, onload, outside_layers, skeleton
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.runtime.progress import progress_bar

log = logging.getLogger("starfish")
MODELS = ("dense", "pruned", "healed")
# the most of the calibration set's hidden states alive at once: the dense, pruned and healed prefixes' inputs
# and the dense and healed outputs of the layer at hand; of the evaluation windows': three models and one output
CALIBRATION_STREAMS = 5
EVALUATION_STREAMS = 4


@dataclass
class SparsityCounts:
    """measure_sparsity's figures, summed block by block (and once for the weights outside the blocks)."""

    per_layer: dict[str, float] = field(default_factory=dict)
    prunable: int = 0
    pruned: int = 0
    parameters: int = 0
    zero: int = 0
    block_weights: int = 0
    block_prunable: int = 0
    block_zero: int = 0

    def add(self, measured: dict[str, Any]) -> None:
        self.per_layer |= measured["per_layer"]
        self.prunable += measured["prunable_weights"]
        self.pruned += round(measured["prunable"] * measured["prunable_weights"])
        self.parameters += measured["total_parameters"]
        self.zero += round(measured["overall"] * measured["total_parameters"])
        blocks = measured.get("block_weights", {"weights": 0, "prunable": 0.0, "zero": 0.0})
        self.block_weights += blocks["weights"]
        self.block_prunable += round(blocks["prunable"] * blocks["weights"])
        self.block_zero += round(blocks["zero"] * blocks["weights"])

    def summary(self) -> dict[str, Any]:
        """The same keys as measure_sparsity's, for the whole model."""
        weights = max(self.block_weights, 1)
        return {"prunable": self.pruned / max(self.prunable, 1), "overall": self.zero / max(self.parameters, 1),
                "prunable_weights": self.prunable, "total_parameters": self.parameters,
                "remaining_parameters": self.parameters,
                "block_weights": {"weights": self.block_weights, "prunable": self.block_prunable / weights,
                                  "zero": self.block_zero / weights},
                "per_layer": self.per_layer}


@dataclass
class OnloadedRun:
    """What the pass produced: the healed folder and the one holding the pruned model (the healed one when healing
    changed nothing), sparsity counts, healing's steps and losses, the perplexity of each model, and what it cost
    (seconds per layer, bytes read and written)."""

    folder: Path
    pruned_folder: Path
    sparsity: SparsityCounts = field(default_factory=SparsityCounts)
    healing: HealResult = field(default_factory=HealResult)
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds_per_layer: list[float] = field(default_factory=list)
    bytes_read: int = 0
    bytes_written: int = 0


def check_onloadable(pruner, healer) -> None:
    """Layer-by-layer onloading prunes each block on its own and heals block-wise (or not at all)."""
    why = pruner.block_by_block() if hasattr(pruner, "block_by_block") else \
        f"pruner={pruner.registered_name} chooses over the whole model"
    if why:
        raise StarfishError(f"{why}: layer-by-layer onloading prunes one block at a time; use pruner=wanda, "
                            "sparsegpt or magnitude (allocation=uniform)")
    if healer is not None and healer.changes_weights and getattr(healer, "mode", None) != "blockwise":
        raise StarfishError(f"healer={healer.registered_name} heals the whole model at once: layer-by-layer onloading "
                            "heals one block at a time: healer=starfish or norm with healer.mode=blockwise (or healer=none)")


def _run(structure, number: int, inputs: torch.Tensor, sizes: list[int], device: torch.device,
         states: HiddenStates) -> torch.Tensor:
    """Block `number` on every item of `inputs`, batch by batch (`sizes`), into a new tensor where `states` keep them."""
    outputs = states.empty_like(inputs)
    with torch.no_grad():
        for x, y in zip(inputs.split(sizes), outputs.split(sizes)):
            y.copy_(structure.run_block(number, x.to(device)))
    return outputs


@dataclass
class Streams:
    """The hidden states passed from layer to layer: the calibration windows' as the dense, pruned and healed
    prefixes make them (each a tensor where `states` keep it, split by `calib_sizes`), the evaluation windows' of
    each model, and each model's block cosine with the dense model per evaluation batch and block."""

    dense_calib: torch.Tensor
    calib_sizes: list[int]
    evaluated: dict[str, torch.Tensor]
    eval_sizes: list[int]
    pruned_calib: torch.Tensor | None = None
    healed_calib: torch.Tensor | None = None
    cosines: dict[str, list[list[torch.Tensor]]] = field(default_factory=dict)

    @classmethod
    def first(cls, structure, calibration: Sequence[torch.Tensor], evaluation: Sequence[torch.Tensor],
              device: torch.device, states: HiddenStates) -> "Streams":
        """The first layer's inputs of the calibration and evaluation windows, placed from their size."""
        with torch.no_grad():
            first = [[x.cpu() for x in structure.first_block_inputs(b.to(device) for b in batches)]
                     for batches in (calibration, evaluation)]
        states.place(CALIBRATION_STREAMS * sum(x.nbytes for x in first[0])
                     + EVALUATION_STREAMS * sum(x.nbytes for x in first[1]))
        calib, evaluated = (states.hold(batches) for batches in first)
        return cls(calib, [len(x) for x in first[0]], dict.fromkeys(MODELS, evaluated), [len(x) for x in first[1]],
                   calib, calib, {name: [[] for _ in first[1]] for name in MODELS})

    def evaluate(self, structure, number: int, name: str, device: torch.device, states: HiddenStates) -> None:
        """Model `name`'s evaluation windows through block `number` (its weights in the block now)."""
        self.evaluated[name] = _run(structure, number, self.evaluated[name], self.eval_sizes, device, states)

    @torch.no_grad()
    def compare(self) -> None:
        """Each model's cosine with the dense model on the block just run, per evaluation batch."""
        dense = self.evaluated["dense"].split(self.eval_sizes)
        for name in MODELS:
            for batch, (state, reference) in enumerate(zip(self.evaluated[name].split(self.eval_sizes), dense)):
                self.cosines[name][batch].append(block_cosine(state, reference))


def _load_outside(model: torch.nn.Module, layers_name: str, weights: ShardedWeights,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Embeddings, final norm and head onto the device (a head tied to the embeddings shares them); their
    tensors under the checkpoint's names."""
    for name, module in outside_layers(model, layers_name):
        if all(f"{name}.{key}" in weights for key, _ in module.named_parameters()):
            onload(module, f"{name}.", weights, device)
    model.tie_weights()
    left = [name for name, parameter in model.named_parameters() if parameter.is_meta
            and not name.startswith(f"{layers_name}.")]
    if left:
        raise StarfishError(f"{weights.folder} has no tensor {left[0]}: not a complete save_pretrained folder")
    return {name: parameter for name, parameter in model.state_dict().items()
            if not name.startswith(f"{layers_name}.") and name in weights}


@dataclass
class Pass:
    """One pass over the layers: what it reads and writes, and the pruner and healer it applies to each layer."""

    structure: Any
    weights: ShardedWeights
    writers: RunWriters
    pruner: Any
    healer: Any
    device: torch.device
    precision: torch.dtype
    states: HiddenStates

    @property
    def heals(self) -> bool:
        return self.healer is not None and self.healer.changes_weights

    def layer(self, number: int, streams: Streams, run: "OnloadedRun") -> None:
        """Read layer `number`, prune it, heal it and write it out; every stream advanced through it."""
        structure, device, states = self.structure, self.device, self.states
        block, prefix = structure.blocks[number], f"{structure.block_name(number)}."
        onload(block, prefix, self.weights, device)
        dense_next = _run(structure, number, streams.dense_calib, streams.calib_sizes, device, states)
        streams.evaluate(structure, number, "dense", device, states)
        pruner_inputs = streams.pruned_calib if self.pruner.reads_pruned_prefix else streams.dense_calib
        masks = self.pruner.prune_block(structure, number, list(pruner_inputs.split(streams.calib_sizes)))
        run.sparsity.add(measure_sparsity(block, structure.block_layers(number), None, {
            name: weight for name, weight in structure.block_weights().items() if name.startswith(prefix)}))
        self.writers.pruned(number, _layer_tensors(block, prefix))
        streams.evaluate(structure, number, "pruned", device, states)
        if self.pruner.reads_pruned_prefix:
            streams.pruned_calib = _run(structure, number, streams.pruned_calib, streams.calib_sizes, device, states)
        if self.heals:
            streams.healed_calib = heal_block(self.healer, structure, number, streams.healed_calib, dense_next, masks,
                                              device, self.precision, run.healing,
                                              outputs=states.empty_like(streams.healed_calib))
            streams.evaluate(structure, number, "healed", device, states)
        else:
            streams.evaluated["healed"] = streams.evaluated["pruned"]
        streams.compare()
        streams.dense_calib = dense_next
        self.writers.healed(number, _layer_tensors(block, prefix), masks)
        offload(block)


def prune_heal_evaluate(folder: Path, pruner, healer, calibration: Sequence[torch.Tensor],
                        evaluation: Sequence[torch.Tensor], device: torch.device, output: Path,
                        precision: torch.dtype = torch.float32, states: HiddenStates | None = None,
                        pruned_output: Path | None = None) -> OnloadedRun:
    """`calibration` and `evaluation`: batches of token windows. The healed model is written to `output` (a
    save_pretrained folder) with its keep-masks in `output`/masks, and the pruned one to `pruned_output` when
    healing changes it; `states`: where the hidden states between layers live (default: host memory). Returns
    what the pass measured."""
    check_onloadable(pruner, healer)
    states = states or HiddenStates()
    weights, model = ShardedWeights(folder), skeleton(folder)
    structure = structure_of(model)  # one instance: the layer arguments it captures serve every layer
    heals = healer is not None and healer.changes_weights
    writers = RunWriters(folder, len(structure.blocks), output, pruned_output if heals else None)
    outside = _load_outside(model, structure.block_name(0).rsplit(".", 1)[0], weights, device)
    writers.outside(outside)
    streams = Streams.first(structure, calibration, evaluation, device, states)
    trained = healer.trainable_names(model) if heals else pruned_weight_names(model)
    run = OnloadedRun(Path(output), Path(pruned_output) if "pruned" in writers.folders else Path(output),
                      healing=HealResult(trained_parameters=trained))
    run.sparsity.parameters = sum(tensor.numel() for tensor in outside.values())
    run.sparsity.zero = sum(int((tensor == 0).sum()) for tensor in outside.values())
    layers = Pass(structure, weights, writers, pruner, healer, device, precision, states)
    with progress_bar("onloading: prune, heal, evaluate", len(structure.blocks)) as advance:
        for number in range(len(structure.blocks)):
            started = time.perf_counter()
            layers.layer(number, streams, run)
            run.seconds_per_layer.append(time.perf_counter() - started)
            advance()
    run.evaluation = _totals(structure, streams, evaluation, device, precision)
    run.bytes_read, run.bytes_written = weights.bytes_read, writers.finish()
    return run


def _layer_tensors(block: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{name}": value for name, value in block.state_dict().items()}


@torch.no_grad()
def _totals(structure, streams: Streams, evaluation: Sequence[torch.Tensor], device: torch.device,
            precision: torch.dtype) -> dict[str, dict[str, Any]]:
    """Each model's results as the whole-model evaluation gives them (perplexity, next-token top-1, agreement with
    the dense model, block cosines), its head run on the last hidden states a chunk of rows at a time. Their
    speed is the pass's, not each model's: no `images_per_second`."""
    metric = METRICS[structure.metric]()
    side_by_side = SideBySide(dict.fromkeys(MODELS, structure), "dense", len(structure.blocks),
                              Clock(device, precision, MODELS), metric)
    totals = Totals(MODELS, metric, len(structure.blocks))
    last = {name: value.split(streams.eval_sizes) for name, value in streams.evaluated.items()}
    for number, tokens in enumerate(evaluation):
        counts = side_by_side.count({name: last[name][number].to(device) for name in MODELS}, tokens.to(device))
        totals.add(BatchOutputs(counts, {name: streams.cosines[name][number] for name in MODELS}, None), len(tokens))
    _seen, results = reduce_across_ranks(totals, dict.fromkeys(MODELS, 0.0))
    return {name: {key: value for key, value in values.items() if key != "images_per_second"}
            for name, values in results.items()}
