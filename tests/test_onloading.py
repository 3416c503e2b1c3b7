"""Layer-by-layer onloading on the embedded LM: the masks, healed weights and perplexities of the whole-model
path, with one decoder layer in memory at a time."""

import copy
import re

import pytest
import torch

from conftest import read_json, run_in_process
from starfish_cli.evaluation.metrics import Perplexity
from starfish_cli.healing import HEALERS
from starfish_cli.models import structure_of
from starfish_cli.models.causal_lm import REFERENCE_DIR, build_model
from starfish_cli.onloading import sequential
from starfish_cli.onloading.sequential import prune_heal_evaluate
from starfish_cli.onloading.states import HiddenStates
from starfish_cli.onloading.weights import ShardedWeights
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime.errors import StarfishError

pytest.importorskip("transformers")


def windows(count: int, seed: int, length: int = 32) -> torch.Tensor:
    return torch.randint(0, 512, (count, length), generator=torch.Generator().manual_seed(seed))


class Items(torch.utils.data.Dataset):
    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        return index, self.tokens[index]


def whole_model(pruner, healer, calibration, evaluation):
    """The path that holds the whole model: prune, heal (block-wise), then each model's perplexity."""
    dense = build_model()
    student = copy.deepcopy(dense)
    masks = pruner.prune(student, calibration)
    pruned = copy.deepcopy(student)
    healer.heal(student, dense, masks, Items(torch.cat(calibration)), torch.device("cpu"))
    metric, results = Perplexity(), {}
    with torch.no_grad():
        reference = [metric.rows(dense(input_ids=x).logits).argmax(-1) for x in evaluation]
        for name, model in {"dense": dense, "pruned": pruned, "healed": student}.items():
            sums, count = [0.0] * metric.size, 0
            for tokens, predicted in zip(evaluation, reference):
                logits = metric.rows(model(input_ids=tokens).logits)  # the whole batch at once
                batch, tokens_here = metric.count(logits, predicted, metric.targets(tokens))
                sums, count = [a + b for a, b in zip(sums, batch)], count + tokens_here
            results[name] = metric.results(sums, count)
    return masks, pruned, student, results


@pytest.mark.parametrize("pruner_name,healer_name", [("sparsegpt", "starfish"), ("magnitude", "norm")])  # wanda: the CLI test
def test_onloading_gives_the_whole_model_results_one_layer_at_a_time(tmp_path, monkeypatch, pruner_name, healer_name):
    from transformers import AutoModelForCausalLM

    calibration, evaluation = list(windows(16, 0).split(8)), list(windows(8, 1).split(4))
    make_pruner = lambda: PRUNERS.build({"name": pruner_name, "sparsity": 0.5})  # noqa: E731
    make_healer = lambda: HEALERS.build({"name": healer_name, "mode": "blockwise", "epochs": 2,  # noqa: E731
                                         "batch_size": 8, "lr": 1e-3})
    masks, pruned, healed, expected = whole_model(make_pruner(), make_healer(), calibration, evaluation)

    layers, at_once = [], []
    real_onload = sequential.onload

    def counting_onload(module, prefix, weights, device):
        real_onload(module, prefix, weights, device)
        if re.search(r"\.\d+\.$", prefix):  # a decoder layer: how many hold weights now
            layers.append(module)
            at_once.append(sum(not next(layer.parameters()).is_meta for layer in layers))

    monkeypatch.setattr(sequential, "onload", counting_onload)
    # the second case keeps the hidden states between layers in files (a budget of 0 bytes on the host)
    states = HiddenStates(tmp_path / "spill", host_budget=0) if healer_name == "norm" else HiddenStates()
    run = prune_heal_evaluate(REFERENCE_DIR, make_pruner(), make_healer(), calibration, evaluation,
                              torch.device("cpu"), tmp_path / "healed", states=states, pruned_output=tmp_path / "pruned")
    assert at_once == [1] * len(structure_of(healed).blocks)  # never two decoder layers at once
    assert states.on_disk == (healer_name == "norm")
    assert not list((tmp_path / "spill").glob("*"))  # mapped files are unlinked at once: nothing is left behind

    stored = ShardedWeights(tmp_path / "healed" / "masks")
    onloaded_masks = stored.read(stored.file_of)
    assert {name.removesuffix(".weight") for name in onloaded_masks} == set(masks)
    assert all(torch.equal(onloaded_masks[f"{name}.weight"], mask) for name, mask in masks.items())
    assert run.sparsity.pruned == sum(int((~mask).sum()) for mask in masks.values())
    for kind, model in {"pruned": pruned, "healed": healed}.items():  # SparseGPT's pruned weights are its own
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / kind, dtype=torch.float32)
        for name, weight in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[name], weight, rtol=1e-4, atol=1e-5)
    for model in ("dense", "pruned", "healed"):
        assert run.evaluation[model]["perplexity"] == pytest.approx(expected[model]["perplexity"], rel=1e-4)
    assert expected["healed"]["perplexity"] != expected["pruned"]["perplexity"]  # healing changed something
    assert set(run.healing.trained_parameters) == set(make_healer().trainable_names(healed))
    assert expected["pruned"]["agreement"] < 100.0  # pruning changed the predictions: the comparison means something
    every = ShardedWeights(REFERENCE_DIR)
    assert run.bytes_read == sum(t.nbytes for t in every.read(every.file_of).values())  # each tensor read once


def test_pruners_and_healers_that_need_the_whole_model_are_refused():
    with pytest.raises(StarfishError, match="one threshold over every layer"):
        sequential.check_onloadable(PRUNERS.build({"name": "global_magnitude"}), None)
    for healer in ("starfish", "norm", "kd"):
        with pytest.raises(StarfishError, match="healer.mode=blockwise"):
            sequential.check_onloadable(PRUNERS.build({"name": "wanda"}), HEALERS.build({"name": healer}))


@pytest.mark.slow
def test_a_model_over_the_memory_budget_goes_layer_by_layer_with_the_whole_model_numbers(tmp_path):
    """`starfish run` on a save_pretrained folder whose whole-model run would not fit `memory_budget` picks onloading
    by itself: the report's sparsity and perplexities are those of the whole-model run, and the healed folder
    loads in plain transformers."""
    from transformers import AutoModelForCausalLM

    options = ["model=hf_causal_lm", f"model.name={REFERENCE_DIR}", "data=fortunes", "healer.mode=blockwise",
               "calib.count=32", "healer.epochs=1", "eval.max_images=8", "eval.speed=false", "device=cpu"]
    run_in_process("run", *options, "hydra.run.dir=whole", cwd=tmp_path)
    onloaded = run_in_process("run", *options, "memory_budget=0.01", "onload_states=disk", "hydra.run.dir=layers",
                              cwd=tmp_path)
    assert "one decoder layer at a time" in onloaded.stdout + onloaded.stderr
    whole, layers = read_json(tmp_path / "whole" / "report.json"), read_json(tmp_path / "layers" / "report.json")
    assert "onloading" in layers and "onloading" not in whole and layers["onloading"]["layers"] == 4
    assert layers["onloading"]["hidden_states"] == "disk" and not (tmp_path / "layers" / "hidden_states").exists()
    stamp = (tmp_path / "layers" / "report.json").stat().st_mtime_ns
    again = run_in_process("run", *options, "memory_budget=0.01", "onload_states=disk", "hydra.run.dir=layers",
                           cwd=tmp_path)
    assert "skipping" in again.stdout + again.stderr  # a finished onloaded run is not run again
    assert (tmp_path / "layers" / "report.json").stat().st_mtime_ns == stamp
    assert layers["sparsity"] == whole["sparsity"]
    assert layers["healing"]["steps"] == whole["healing"]["steps"]
    for model in ("dense", "pruned", "healed"):
        assert layers["accuracy"][model]["perplexity"] == pytest.approx(whole["accuracy"][model]["perplexity"],
                                                                        rel=1e-4)
    healed = AutoModelForCausalLM.from_pretrained(tmp_path / "layers" / "healed", dtype=torch.float32)
    zeros = sum(int((module.weight == 0).sum()) for name, module in healed.named_modules()
                if isinstance(module, torch.nn.Linear) and ".layers." in name)
    assert zeros == round(layers["sparsity"]["prunable"] * layers["sparsity"]["prunable_weights"])
    for model in ("pruned", "healed"):  # the alignment section, as the whole-model evaluation gives it
        assert layers["accuracy"][model]["block_cosine"] == pytest.approx(whole["accuracy"][model]["block_cosine"],
                                                                          abs=1e-4)
    assert "## Per-block alignment with dense" in (tmp_path / "layers" / "report.md").read_text()
    assert (tmp_path / "layers" / "calibration_indices.json").is_file()

    import starfish_cli  # load, eval and export read the onloaded run like any other

    loaded = starfish_cli.load(tmp_path / "layers")
    tokens = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=tokens).logits, healed(input_ids=tokens).logits)
    run_in_process("eval", *options, "hydra.run.dir=layers", cwd=tmp_path)
    evaluated = read_json(tmp_path / "layers" / "report.json")
    assert evaluated["accuracy"]["healed"]["perplexity"] == pytest.approx(layers["accuracy"]["healed"]["perplexity"],
                                                                          rel=1e-5)
    run_in_process("export", *options, "export.format=hf", "hydra.run.dir=layers", cwd=tmp_path)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "layers" / "hf", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(exported(input_ids=tokens).logits, healed(input_ids=tokens).logits)


def test_when_a_run_goes_layer_by_layer():
    """`onload=auto` only past the memory budget, and not for end-to-end healing (its own refusal names blockwise
    and FSDP2); `onload=true` where it cannot serve is one line."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from starfish_cli.stages.onloaded import onload_folder

    def decide(*overrides):
        with initialize_config_module(config_module="starfish_cli.configs", version_base="1.3"):
            cfg = compose(config_name="starfish", overrides=list(overrides))
        pruner, healer = (registry.build(OmegaConf.to_container(cfg[group], resolve=True)) for registry, group
                          in ((PRUNERS, "pruner"), (HEALERS, "healer")))
        return onload_folder(cfg, ("prune", "heal", "eval"), pruner, healer, torch.device("cpu"))

    assert decide("model=lm_reference", "data=fortunes", "healer=none") is None  # it fits
    assert decide("model=lm_reference", "data=fortunes", "healer=none", "memory_budget=0.001") == REFERENCE_DIR
    assert decide("model=lm_reference", "data=fortunes", "healer.mode=blockwise", "memory_budget=0.001") \
        == REFERENCE_DIR
    assert decide("model=lm_reference", "data=fortunes", "memory_budget=0.001") == REFERENCE_DIR  # the lm recipe
    assert decide("model=lm_reference", "data=fortunes", "healer.mode=end_to_end", "memory_budget=0.001") is None
    assert decide("model=lm_reference", "data=fortunes", "healer=none", "onload=true") == REFERENCE_DIR
    assert decide("model=lm_reference", "healer=none", "memory_budget=0.001", "onload=false") is None
    with pytest.raises(StarfishError, match="it serves causal LMs"):
        decide("onload=true")
    with pytest.raises(StarfishError, match="one threshold over every layer"):
        decide("model=lm_reference", "data=fortunes", "healer=none", "pruner=global_magnitude", "onload=true")
