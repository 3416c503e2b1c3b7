"""The Python API (`starfish_cli.prune`, `.heal`, `.evaluate`): docs/api.md's example runs, the API gives the
weights the stages' pruner and healer give, and names, instances and bad options behave as on the CLI."""

import contextlib
import copy
import io
import re
from pathlib import Path

import pytest
import torch

import starfish_cli
from starfish_cli.api import TensorItems
from starfish_cli.healing import HEALERS
from starfish_cli.pruning import PRUNERS
from starfish_cli.pruning.wanda import WandaPruner
from starfish_cli.runtime.errors import StarfishError
from conftest import read_json, run_in_process

DOC = Path(__file__).parents[1] / "docs" / "api.md"


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_the_api_is_imported_on_first_use():
    assert starfish_cli.prune is starfish_cli.api.prune and starfish_cli.evaluate is starfish_cli.api.evaluate
    with pytest.raises(AttributeError):
        starfish_cli.nothing_of_that_name  # noqa: B018


@pytest.mark.slow
def test_docs_example_runs_and_matches_starfish_run_with_the_same_settings(fmnist, tmp_path):
    text = DOC.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    printed, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(DOC), "exec"), namespace)
    assert "sparsity 0.750, 2 healing steps" in printed.getvalue()
    results = namespace["results"]["models"]
    assert namespace["results"]["images"] == 256
    assert results["dense"]["top1"] > 85 and results["pruned"]["top1"] < results["dense"]["top1"]
    assert results["healed"]["top1"] > results["pruned"]["top1"]  # one epoch of healing already recovers some
    assert min(results["healed"]["block_cosine"]) > min(results["pruned"]["block_cosine"])

    # the command the docs name, run as a user would: the same pruning, healing and top-1
    command = re.search(r"`starfish run ([^`]*)`", text).group(1).split()
    run_in_process("run", *command, "eval.speed=false", cwd=tmp_path)
    report = read_json(next((tmp_path / "outputs").rglob("report.json")))
    healing = namespace["healing"]
    assert report["healing"]["loss_history"] == pytest.approx(healing.loss_history, rel=1e-6)
    assert report["sparsity"]["prunable"] == pytest.approx(namespace["pruning"].sparsity["prunable"], abs=1e-9)
    for name in ("dense", "pruned", "healed"):
        assert report["accuracy"][name]["top1"] == pytest.approx(results[name]["top1"], abs=1e-6), name


@pytest.mark.slow
def test_api_prune_and_heal_give_the_weights_of_the_stages_pruner_and_healer(reference_model, calibration_images,
                                                                             calibration_batches):
    pruning = starfish_cli.prune(reference_model, "wanda", calibration_images, sparsity=0.75)
    by_stage = copy.deepcopy(reference_model)  # what stages/prune.py did before it called the API
    masks = PRUNERS.build({"name": "wanda", "sparsity": 0.75}, seed=0).prune(by_stage, calibration_batches)
    assert same_weights(pruning.model, by_stage) and masks.keys() == pruning.masks.keys()
    assert all(torch.equal(masks[name], pruning.masks[name]) for name in masks)
    assert pruning.sparsity["prunable"] == pytest.approx(0.75, abs=1e-3)

    healing = starfish_cli.heal(pruning.model, reference_model, pruning.masks, calibration_images, "starfish", epochs=1)
    student = copy.deepcopy(by_stage)
    result = HEALERS.build({"name": "starfish", "epochs": 1}, seed=0).heal(
        student, reference_model, masks, calibration_images, torch.device("cpu"))
    assert same_weights(healing.model, student)
    assert healing.steps == result.steps == 2 and healing.loss_history == result.loss_history
    assert same_weights(pruning.model, by_stage)  # the API healed a copy: the pruned model is as it was


def test_names_instances_and_bad_options(reference_model):
    images = torch.randn(8, 1, 28, 28)
    by_name = starfish_cli.prune(reference_model, "wanda", images, sparsity=0.6)
    by_instance = starfish_cli.prune(reference_model, WandaPruner(sparsity=0.6), images)
    assert same_weights(by_name.model, by_instance.model) and by_name.pruner.describe() == by_instance.pruner.describe()
    assert starfish_cli.prune(reference_model, "magnitude").sparsity["prunable"] == pytest.approx(0.5, abs=1e-3)
    unchanged = starfish_cli.heal(by_name.model, reference_model, by_name.masks, images, "none")
    assert same_weights(unchanged.model, by_name.model) and unchanged.steps == 0
    bad = [
        (lambda: starfish_cli.prune(reference_model, "wanda", images, sparsty=0.5), "has no option 'sparsty'"),
        (lambda: starfish_cli.prune(reference_model, "wanda", images, comparison="column"), "pruner.comparison="),
        (lambda: starfish_cli.prune(reference_model, "wanda", images, sparsity=1.5), "pruner.sparsity=1.5"),
        (lambda: starfish_cli.prune(reference_model, WandaPruner(), images, sparsity=0.5), "options go with"),
        (lambda: starfish_cli.prune(reference_model, "wanda"), "give calibration="),
        (lambda: starfish_cli.prune(reference_model, "pruneall", images), "unknown pruner 'pruneall'"),
        (lambda: starfish_cli.heal(by_name.model, reference_model, by_name.masks, images, "kd", epochs=-1),
         "healer.epochs=-1"),
        (lambda: starfish_cli.evaluate({"dense": reference_model}, images), "needs labels"),
        (lambda: starfish_cli.evaluate({"dense": reference_model}, TensorItems(images)), "(index, input, target)"),
        (lambda: starfish_cli.evaluate({"dense": reference_model}, [1, 2, 3]), "cannot read list as data"),
    ]
    for call, message in bad:
        with pytest.raises(StarfishError, match=re.escape(message)) as error:
            call()
        assert "\n" not in str(error.value)


def test_evaluate_reads_tensors_and_items_alike(reference_model):
    images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    from_tensors = starfish_cli.evaluate({"dense": reference_model}, (images, labels), batch_size=8)
    from_items = starfish_cli.evaluate({"dense": reference_model}, TensorItems(images, labels), batch_size=8)
    assert from_tensors["images"] == from_items["images"] == 16
    assert from_tensors["models"]["dense"]["top1"] == from_items["models"]["dense"]["top1"]


def test_a_causal_lm_from_token_ids():
    transformers = pytest.importorskip("transformers")
    from starfish_cli.models.causal_lm import REFERENCE_DIR

    dense = transformers.AutoModelForCausalLM.from_pretrained(REFERENCE_DIR).eval()
    tokens = torch.randint(0, dense.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    pruning = starfish_cli.prune(dense, "wanda", tokens, sparsity=0.5)
    healing = starfish_cli.heal(pruning.model, dense, pruning.masks, tokens, "kd", epochs=1, batch_size=4)
    results = starfish_cli.evaluate({"dense": dense, "pruned": pruning.model, "healed": healing.model}, tokens)
    assert pruning.sparsity["prunable"] == pytest.approx(0.5, abs=1e-3) and healing.steps == 2
    assert all(metrics["perplexity"] > 1 for metrics in results["models"].values())


def test_a_datasets_image_split_is_preprocessed_as_the_model_reads_it(reference_model, fmnist, test_images):
    split = fmnist.load("test").select(range(256))
    from_split = starfish_cli.evaluate({"dense": reference_model}, split)
    from_items = starfish_cli.evaluate({"dense": reference_model}, test_images)  # conftest's items, as the stages'
    assert from_split["images"] == 256 and from_split["models"]["dense"]["top1"] == from_items["models"]["dense"]["top1"]
    pruning = starfish_cli.prune(reference_model, "wanda", split.select(range(32)).remove_columns("label"))
    assert pruning.sparsity["prunable"] == pytest.approx(0.5, abs=1e-3)
