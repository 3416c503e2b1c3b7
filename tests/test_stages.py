"""The stage pipeline through the `starfish` command: prune once, heal many; the run-folder layout;
sweeps that survive a failing run; options end to end. In process (the CLI's `main`), shrunk sizes; a
subprocess only where one is killed."""

import json

import pytest

from conftest import SHRUNK, needs_fmnist, read_json, run_in_process
from starfish_cli.artifacts.checkpoint import load_checkpoint
from starfish_cli.pruning.masks import masks_digest

pytestmark = needs_fmnist
PRUNING = ["pruner.sparsity=0.6", "calib.count=32"]
HEALING = ["healer.epochs=1", "eval.max_images=256", "eval.batch_size=128"]


def results(report):
    """What a run computed, without its timings."""
    accuracy = {name: {k: v for k, v in entry.items() if k != "images_per_second"}
                for name, entry in report["accuracy"].items() if isinstance(entry, dict)}
    return json.dumps([accuracy, report["healing"], report["sparsity"]], sort_keys=True)


@pytest.mark.slow
def test_prune_once_heal_with_two_healers_and_eval_each(tmp_path):
    run_in_process("prune", *PRUNING, cwd=tmp_path)
    run_in_process("heal", "-m", *PRUNING, "healer=kd,starfish", *HEALING, cwd=tmp_path)  # both from the one checkpoint
    run_in_process("eval", *PRUNING, "healer=kd", *HEALING, cwd=tmp_path)
    pruning = tmp_path / "outputs/default/vit_fmnist/wanda-0.6+calib.count=32/seed0"
    assert {p.name for p in pruning.glob("*.safetensors")} == {"pruned.safetensors"}
    assert (pruning / "calibration_indices.json").is_file()
    pruned = load_checkpoint(pruning / "pruned.safetensors", "prune")
    folders = {healer: pruning / f"{healer}+eval.max_images=256,healer.epochs=1" for healer in ("kd", "starfish")}
    healed = {healer: load_checkpoint(folder / "healed.safetensors", "heal") for healer, folder in folders.items()}
    for checkpoint in healed.values():  # both healed the one pruned checkpoint
        assert checkpoint.metadata["pruned_masks_digest"] == pruned.metadata["masks_digest"]
        assert masks_digest(checkpoint.masks) == masks_digest(pruned.masks)
    report = read_json(folders["kd"] / "report.json")
    assert report["healer"]["name"] == "kd" and report["labels"] == {"pruner": "wanda", "healer": "kd[epochs=1]"}
    assert report["accuracy"]["images"] == 256 and set(report["stages"]) == {"prune", "heal", "eval"}
    assert report["checkpoints"]["pruned_masks_digest"] == pruned.metadata["masks_digest"]
    speed = report["speed"]  # eval.speed: on by default, at batch 1 and at the evaluation's batch
    assert speed["batch_sizes"] == [1, 128] and set(speed["models"]) == {"dense", "pruned", "healed"}
    assert speed["models"]["dense"]["vs_dense"] == {"1": 1.0, "128": 1.0}
    assert speed["models"]["healed"]["nonzero_parameters"] < speed["models"]["dense"]["nonzero_parameters"]
    assert "## Speed and size" in (folders["kd"] / "report.md").read_text()


@pytest.mark.slow
def test_sweep_over_healers_prunes_once_with_the_numbers_of_separate_runs(tmp_path):
    sweep = run_in_process("run", "-m", "pruner=sparsegpt", *PRUNING, "healer=norm,kd", *HEALING, "eval.speed=false",
                           cwd=tmp_path)
    log = sweep.stdout + sweep.stderr
    assert log.count("pruned with sparsegpt") == 1 and log.count("reusing") == 1
    pruning = tmp_path / "outputs/default/vit_fmnist/sparsegpt-0.6+calib.count=32/seed0"
    swept = {healer: read_json(next(pruning.glob(f"{healer}+*")) / "report.json") for healer in ("norm", "kd")}
    assert "reused" not in swept["norm"]["stages"]["prune"] and swept["kd"]["stages"]["prune"]["reused"]
    alone = run_in_process("run", "pruner=sparsegpt", *PRUNING, "healer=kd", *HEALING, "eval.speed=false",
                           "hydra.run.dir=alone", cwd=tmp_path)
    assert "pruned with sparsegpt" in alone.stdout + alone.stderr
    assert results(read_json(tmp_path / "alone" / "report.json")) == results(swept["kd"])


@pytest.mark.parametrize("values,message", [
    ("0.5,1.0", "pruner.sparsity=1.0 is outside [0, 1): give the fraction of weights to remove, e.g. 0.5"),
    ("0.5,abc", "pruner.sparsity='abc' must be a number or a mapping"),
])
def test_a_bad_value_anywhere_in_a_sweep_stops_it_before_any_run(tmp_path, values, message):
    result = run_in_process("run", "-m", f"pruner.sparsity={values}", *SHRUNK, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"starfish: error: {message}"]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_a_failing_run_of_a_sweep_leaves_the_others(tmp_path):
    shrunk = [o for o in SHRUNK if not o.startswith("calib.count=")]
    # a count larger than the split is found only once the data is read: the second run fails at calibration
    result = run_in_process("run", "-m", "calib.count=32,70000", *shrunk, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("starfish: error:")]
    assert len(errors) == 1 and "calib.count=70000" in errors[0] and "exceeds the 60000 images" in errors[0]
    sweep = tmp_path / "outputs" / "default"
    assert (sweep / "multirun.yaml").is_file()
    assert [p.parent.parent.name for p in sweep.rglob("healed.safetensors")] == ["seed0"]
    assert not list(sweep.glob("vit_fmnist/*70000*")), "the failed run left its folder"
    assert "accuracy" in read_json(next(sweep.rglob("seed0/starfish*/report.json")))


@pytest.mark.slow
def test_supervised_healer_says_it_used_labels(tmp_path):
    run_in_process("run", *SHRUNK, "healer=supervised", "hydra.run.dir=out", cwd=tmp_path)
    report = read_json(tmp_path / "out" / "report.json")
    assert report["calibration"]["labels_used"] is True and report["healer"]["name"] == "supervised"
    assert report["healing"]["steps"] == 1
    assert "labels used: true" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_per_layer_sparsity_mapping_with_sparsegpt(tmp_path):
    mapping = "{blocks.0.*:0.25,*.mlp.*:0.8,*:0.5}"  # Hydra's dict syntax: globs need no quotes
    run_in_process("run", *SHRUNK, "pruner=sparsegpt", f"pruner.sparsity={mapping}", "hydra.run.dir=out", cwd=tmp_path)
    per_layer = read_json(tmp_path / "out" / "report.json")["sparsity"]["per_layer"]
    assert per_layer["blocks.0.mlp.fc1"] == pytest.approx(0.25, abs=0.01)  # the first matching glob wins
    assert per_layer["blocks.3.mlp.fc2"] == pytest.approx(0.8, abs=0.01)
    assert per_layer["blocks.3.attn.qkv"] == pytest.approx(0.5, abs=0.01)
    healed = load_checkpoint(tmp_path / "out" / "healed.safetensors", "heal")
    for layer, mask in healed.masks.items():  # healing kept every pruned weight at zero
        assert not healed.weights[f"{layer}.weight"][~mask].any()


@pytest.mark.slow
def test_compiled_blocks_give_the_numbers_of_the_eager_model(tmp_path):
    run_in_process("run", *SHRUNK, "compile=true", "hydra.run.dir=compiled", cwd=tmp_path)
    run_in_process("run", *SHRUNK, "hydra.run.dir=eager", cwd=tmp_path)
    compiled, eager = (read_json(tmp_path / name / "report.json") for name in ("compiled", "eager"))
    assert compiled["healing"]["steps"] == eager["healing"]["steps"] == 1
    # compiled kernels may round differently: the same model within a few images of 256
    for model in ("dense", "pruned", "healed"):
        assert compiled["accuracy"][model]["top1"] == pytest.approx(eager["accuracy"][model]["top1"], abs=1.0), model
    assert compiled["healing"]["final_loss"] == pytest.approx(eager["healing"]["final_loss"], rel=1e-3)


@pytest.mark.slow
def test_checkpoints_of_an_old_run_folder_still_heal_and_evaluate(tmp_path):
    """Version 0.1.0 folders put the pruned checkpoint beside the healed one, with less metadata:
    `pruned=PATH healed=PATH` reads them."""
    from starfish_cli.artifacts.checkpoint import save_checkpoint

    run_in_process("run", *SHRUNK, "healer=norm", "hydra.run.dir=new", cwd=tmp_path)
    old = tmp_path / "old"
    for name, dropped in (("pruned", ("pruning_config", "timing")),
                          ("healed", ("labels_used", "changes_weights", "healing", "timing"))):
        checkpoint = load_checkpoint(tmp_path / "new" / f"{name}.safetensors", name)
        model = {k: v for k, v in checkpoint.weights.items()}
        metadata = {k: v for k, v in checkpoint.metadata.items() if k not in dropped}

        class Weights:  # what save_checkpoint reads from a module
            @staticmethod
            def state_dict():
                return model

        save_checkpoint(old / f"{name}.safetensors", Weights, checkpoint.masks, metadata)
    run_in_process("eval", *SHRUNK, f"pruned={old / 'pruned.safetensors'}", f"healed={old / 'healed.safetensors'}",
            "hydra.run.dir=evaluated", cwd=tmp_path)
    report, new = read_json(tmp_path / "evaluated" / "report.json"), read_json(tmp_path / "new" / "report.json")
    assert "healing" not in report  # the old checkpoint did not record it
    for model in ("dense", "pruned", "healed"):
        assert report["accuracy"][model]["top1"] == new["accuracy"][model]["top1"]
        assert report["accuracy"][model]["block_cosine"] == new["accuracy"][model]["block_cosine"]
    assert report["calibration"]["labels_used"] is False and report["labels"]["healer"] == "norm[epochs=1]"
    run_in_process("heal", *SHRUNK, f"pruned={old / 'pruned.safetensors'}", "hydra.run.dir=healed", cwd=tmp_path)
    assert load_checkpoint(tmp_path / "healed" / "healed.safetensors", "heal").metadata["pruned_masks_digest"] \
        == new["checkpoints"]["pruned_masks_digest"]


@pytest.mark.slow
def test_a_greyscale_timm_vit_from_a_local_checkpoint_with_its_own_normalization(tmp_path):
    """A shape the project does not ship, weights from a file written here, mean/std from the config:
    the report's dense top-1 is what plain timm code gives for the same weights and normalization."""
    import timm
    import torch
    from safetensors.torch import save_file

    from starfish_cli.data import DATASETS
    from starfish_cli.data.images import ImageTensors

    shape = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=3, num_heads=2)
    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch16_224", pretrained=False, **shape)
    path = tmp_path / "grey.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    kwargs = "{" + ",".join(f"{k}:{v}" for k, v in shape.items()) + "}"
    run_in_process("run", "model.name=vit_small_patch16_224", f"model.checkpoint_path={path}", f"model.kwargs={kwargs}",
            "model.data_config={mean:[0.5],std:[0.5]}", *SHRUNK, "hydra.run.dir=out", cwd=tmp_path)
    report = read_json(tmp_path / "out" / "report.json")
    assert report["sparsity"]["prunable"] == pytest.approx(0.75, abs=1e-3) and report["healing"]["steps"] == 1

    plain = timm.create_model("vit_small_patch16_224", pretrained=True, **shape, pretrained_cfg_overlay=dict(
        file=str(path), num_classes=10, mean=(0.5,), std=(0.5,), input_size=(1, 28, 28))).eval()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), source.state_dict().values()))
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=plain))
    test = ImageTensors(DATASETS.build({"name": "fashion_mnist", "hub_id": None}).load("test").select(range(256)),
                        transform, channels=1, with_labels=True)
    with torch.no_grad():
        logits = plain(torch.stack([test[i][1] for i in range(256)]))
    correct = (logits.argmax(-1) == torch.tensor([test[i][2] for i in range(256)])).sum().item()
    assert report["accuracy"]["dense"]["top1"] == pytest.approx(100.0 * correct / 256, abs=1e-9)


@pytest.mark.slow
def test_a_healing_killed_midway_resumes_to_the_same_weights(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    args = ["run", "calib.count=64", "healer.batch_size=8", "healer.epochs=4", "healer.save_every=10",
            "eval.max_images=64", "eval.speed=false"]
    run_in_process(*args, "hydra.run.dir=whole", cwd=tmp_path)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TMPDIR": str(tmp_path / "tmp")}
    process = subprocess.Popen([sys.executable, "-m", "starfish_cli", *args, "hydra.run.dir=killed"], cwd=tmp_path,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "heal_state.pt"
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists() and not (tmp_path / "killed" / "healed.safetensors").exists()
    assert not list((tmp_path / "tmp").glob("starfish-config-*"))  # no temporary config folder without --config
    resumed = run_in_process(*args, "hydra.run.dir=killed", cwd=tmp_path)
    # it resumed (a restart from step 0 would reach the same weights too, only later)
    assert "resuming healing from" in resumed.stdout + resumed.stderr and not state.exists()
    whole = load_checkpoint(tmp_path / "whole" / "healed.safetensors", "heal")
    again = load_checkpoint(tmp_path / "killed" / "healed.safetensors", "heal")
    assert all(torch.equal(whole.weights[name], again.weights[name]) for name in whole.weights)
    assert read_json(tmp_path / "killed" / "report.json")["healing"] \
        == read_json(tmp_path / "whole" / "report.json")["healing"]  # the loss history too
