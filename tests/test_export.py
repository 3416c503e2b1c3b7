"""`starfish export` and `starfish_cli.load`: compressed files that load bit-identical weights, their
sizes against the dense model, ONNX checked in onnxruntime, and bad input."""

import copy
import importlib
import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

import starfish_cli
from conftest import SHRUNK, needs_fmnist, outputs_in_plain_python, parsed_card, read_json, run_in_process
from starfish_cli.artifacts.checkpoint import load_checkpoint, read_header
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.artifacts.export import byte_counts, compress, safetensors_bytes, write_export
from starfish_cli.models import structure_of
from starfish_cli.artifacts.load import model_file
from starfish_cli.pruning import PRUNERS

PATTERNS = {"unstructured": "bitmask", "2:4": "n:m"}
SIZE_TARGETS = {"unstructured": 0.30, "2:4": 0.56}  # × the dense model's file, at 75% and 2:4


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """One sweep (Wanda 75% unstructured and 2:4, shrunk) and its export with format=onnx and format=hf: the
    healer folders by pattern. The export finds them through the same overrides, as `eval` does. Made once for
    the whole suite: the first xdist worker to need it makes it under a lock, the others wait and reuse it."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the same folder for every worker of this session
    root = shared / "export_runs"
    with FileLock(str(shared / "export_runs.lock")):
        if not (root / "done").exists():
            root.mkdir(exist_ok=True)
            sweep = ["-m", "pruner.pattern=unstructured,2:4", *SHRUNK]
            run_in_process("run", *sweep, cwd=root)
            run_in_process("export", *sweep, "format=onnx", cwd=root)
            run_in_process("export", *sweep, "format=hf", cwd=root)
            (root / "done").touch()
    folders = {}
    for healed in (root / "outputs").rglob("healed.safetensors"):
        folders["2:4" if "2_4" in str(healed) else "unstructured"] = healed.parent
    assert sorted(folders) == sorted(PATTERNS)
    return root, folders


def same_bits(loaded: torch.Tensor, healed: torch.Tensor) -> bool:
    """Equal bits, zeros' signs included (pruned weights are +0.0 in the checkpoint and the export)."""
    return loaded.dtype == healed.dtype and torch.equal(loaded.view(torch.int32), healed.view(torch.int32))


def top1(model, images) -> float:
    correct = total = 0
    with torch.no_grad():
        for start in range(0, len(images), 128):
            batch = [images[i] for i in range(start, min(start + 128, len(images)))]
            logits = model(torch.stack([item[1] for item in batch]))
            correct += int((logits.argmax(-1) == torch.tensor([item[2] for item in batch])).sum())
            total += len(batch)
    return 100.0 * correct / total


@needs_fmnist
@pytest.mark.parametrize("pattern", PATTERNS)
def test_export_loads_bit_identical_weights_and_the_same_top1(runs, pattern, test_images):
    folder = runs[1][pattern]
    export = folder / "export"
    assert sorted(p.name for p in export.iterdir()) == ["model.json", "model.onnx", "model.safetensors"]
    header = read_header(export / "model.safetensors")
    assert {layout["layout"] for layout in header["layouts"].values()} == {PATTERNS[pattern]}
    assert len(header["layouts"]) == 24  # every pruned matrix of the six blocks
    healed = load_checkpoint(folder / "healed.safetensors", "heal").weights
    for path in (folder, export, export / "model.safetensors"):
        model = starfish_cli.load(path)
        state = model.state_dict()
        assert not model.training and sorted(state) == sorted(healed)
        assert all(same_bits(state[name], healed[name]) for name in healed), path
    from_checkpoint = starfish_cli.load(folder / "healed.safetensors")
    images = torch.stack([test_images[i][1] for i in range(32)])
    with torch.no_grad():
        assert torch.equal(model(images), from_checkpoint(images))
    assert top1(model, test_images) == read_json(folder / "report.json")["accuracy"]["healed"]["top1"]
    import timm

    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == (1, 28, 28) and data["mean"] == (0.286,) and data["std"] == (0.353,)


@needs_fmnist
@pytest.mark.parametrize("pattern", PATTERNS)
def test_export_sizes_are_in_model_json_and_the_report(runs, pattern):
    folder = runs[1][pattern]
    described = read_json(folder / "export" / "model.json")
    sizes = described["sizes"]
    assert sizes["export_bytes"] == (folder / "export" / "model.safetensors").stat().st_size
    assert sizes["dense_bytes"] == 4806560  # the dense vit_fmnist state_dict as a plain safetensors file
    assert sizes["ratio"] <= SIZE_TARGETS[pattern]
    assert described["model"] == {"name": "vit_fmnist", "kwargs": {}} and described["pruner"]["pattern"] == pattern
    assert described["accuracy"]["images"] == 256 and described["dtype"] == "float32"
    report = read_json(folder / "report.json")
    assert report["export"]["ratio"] == sizes["ratio"] and "accuracy" in report  # the eval results stay
    text = (folder / "report.md").read_text()
    assert "## Export" in text
    for plot in ("healing_loss.png", "block_alignment.png"):  # the run's plots, kept and linked in the rewrite
        assert f"]({plot})" in text and (folder / plot).read_bytes().startswith(b"\x89PNG"), plot


@needs_fmnist
def test_onnx_top1_matches_pytorch(runs):
    onnx = read_json(runs[1]["unstructured"] / "export" / "model.json")["onnx"]
    assert onnx["images"] == 256
    assert abs(onnx["top1_onnxruntime"] - onnx["top1_pytorch"]) <= 0.05
    assert onnx["images_per_second_onnxruntime"] > 0 and onnx["images_per_second_pytorch"] > 0
    assert read_json(runs[1]["unstructured"] / "report.json")["export"]["onnx"] == onnx


def test_size_at_90_percent_and_bfloat16_halves_the_values(reference_model, tmp_path):
    model = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.9}, seed=0).prune(model, None)
    weights = model.state_dict()
    header = {"model": {"name": "vit_fmnist"}, "data_config": {}, "structure": None, "dtype": "float32"}
    full = compress(weights, masks)
    write_export(tmp_path / "model.safetensors", full, header)
    assert (tmp_path / "model.safetensors").stat().st_size / safetensors_bytes(weights) <= 0.16
    half, single = byte_counts(compress(weights, masks, dtype=torch.bfloat16)), byte_counts(full)
    assert half["values"] * 2 == single["values"] and half["dense"] * 2 == single["dense"]
    assert half["indices"] == single["indices"]


def test_nearly_full_masks_stay_dense(reference_model):
    layer = next(iter(structure_of(reference_model).prunable_layers()))
    weights = reference_model.state_dict()
    mask = torch.ones_like(weights[f"{layer}.weight"], dtype=torch.bool)
    compressed = compress(weights, {layer: mask})
    assert compressed.layouts == {} and torch.equal(compressed.tensors[f"{layer}.weight"], weights[f"{layer}.weight"])


def test_load_says_what_is_wrong_with_a_path(tmp_path):
    (tmp_path / "pruning").mkdir()
    (tmp_path / "pruning" / "pruned.safetensors").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    for path, message in [(tmp_path / "missing", "does not exist"), (tmp_path / "pruning", "is a pruning folder"),
                          (tmp_path / "empty", "holds no starfish model"),
                          (tmp_path / "foreign.safetensors", "not a starfish checkpoint")]:
        with pytest.raises(StarfishError, match=message):
            starfish_cli.load(path)


def test_onnx_without_the_extra_says_how_to_install_it(monkeypatch):
    from starfish_cli.artifacts.onnx import require_onnx

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(StarfishError, match=r"pip install 'starfish-cli\[deploy\]'"):
        require_onnx()


def test_an_onnx_export_error_is_one_line_and_leaves_no_file(tmp_path):
    from starfish_cli.artifacts.onnx import export_onnx

    class Untraceable(torch.nn.Module):
        def forward(self, images):
            raise RuntimeError("data-dependent control flow\nmore lines")

    with pytest.raises(StarfishError, match="torch.onnx.export could not export Untraceable") as error:
        export_onnx(Untraceable(), tmp_path / "model.onnx", (1, 4, 4))
    assert "\n" not in str(error.value) and list(tmp_path.iterdir()) == []


def test_load_is_imported_on_first_use(monkeypatch):
    monkeypatch.delitem(sys.modules, "starfish_cli.artifacts.load")
    monkeypatch.delattr(starfish_cli.artifacts, "load")
    importlib.reload(starfish_cli)  # what `import starfish_cli` runs
    assert "starfish_cli.artifacts.load" not in sys.modules
    assert starfish_cli.load.__module__ == "starfish_cli.artifacts.load" and "starfish_cli.artifacts.load" in sys.modules


@needs_fmnist
@pytest.mark.parametrize("overrides,message", [
    (["hydra.run.dir=fresh"], "no checkpoint at"),
    (["export.format=tflite"], "export.format='tflite': choose one of safetensors, onnx"),
    (["dtype=int8"], "export.dtype='int8': choose one of float32, bfloat16, float16"),
])
@pytest.mark.slow
def test_bad_export_input_is_one_line_and_writes_nothing(runs, overrides, message):
    root, folders = runs
    folder = folders["unstructured"]
    before = {path: path.read_bytes() for path in [*(folder / "export").iterdir(), folder / "report.json"]}
    pattern = ["pruner.pattern=unstructured"] if "hydra.run.dir=fresh" not in overrides else []
    result = run_in_process("export", *SHRUNK, *pattern, *overrides, cwd=root, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
    assert not (root / "fresh").exists()
    assert {path: path.read_bytes() for path in [*(folder / "export").iterdir(), folder / "report.json"]} == before
    assert json.loads((folder / "export" / "model.json").read_text())["format"] == "starfish-export"


def test_structured_model_exports_its_smaller_dense_tensors(reference_model, tmp_path):
    from starfish_cli.artifacts.checkpoint import save_checkpoint

    model = copy.deepcopy(reference_model)
    pruner = PRUNERS.build({"name": "structured", "heads": 0.5, "mlp": 0.5, "criterion": "magnitude"}, seed=0)
    masks = pruner.prune(model, None)
    structure = structure_of(model).block_sizes()
    config = {"name": "vit_fmnist", "pretrained": True, "checkpoint_path": None, "kwargs": {}, "data_config": {}}
    save_checkpoint(tmp_path / "healed.safetensors", model, masks,
                    {"model": config, "pruner": pruner.describe(), "structure": structure})
    compressed = compress(model.state_dict(), masks, pruner.describe().get("pattern", "unstructured"))
    assert compressed.layouts == {}  # nothing left to mask: plain dense tensors of the smaller shapes
    header = {"model": config, **structure_of(model).recorded(), "structure": structure, "dtype": "float32"}
    write_export(tmp_path / "export" / "model.safetensors", compressed, header)
    assert safetensors_bytes(model.state_dict()) < 0.75 * safetensors_bytes(reference_model.state_dict())
    for path in (tmp_path / "healed.safetensors", tmp_path / "export"):
        state = starfish_cli.load(path).state_dict()
        assert all(torch.equal(state[name], value) for name, value in model.state_dict().items()), path


@needs_fmnist
def test_a_run_folder_healed_again_after_its_export_loads_the_newer_checkpoint(runs, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(runs[1]["unstructured"], folder)
    healed = folder / "healed.safetensors"
    os.utime(healed, ns=((folder / "export" / "model.safetensors").stat().st_mtime_ns + 10**9,) * 2)
    with pytest.warns(UserWarning, match="newer than its export"):
        assert model_file(folder) == healed
    assert model_file(folder / "export") == folder / "export" / "model.safetensors"


def test_a_structured_model_in_onnxruntime_has_pytorch_top1(reference_model, test_images, tmp_path):
    pytest.importorskip("onnxruntime")
    from starfish_cli.artifacts.onnx import compare_with_pytorch, export_onnx

    model = copy.deepcopy(reference_model)
    PRUNERS.build({"name": "structured", "heads": 0.5, "mlp": 0.5, "criterion": "magnitude"}, seed=0).prune(model, None)
    export_onnx(model, tmp_path / "model.onnx", tuple(test_images[0][1].shape))
    compared = compare_with_pytorch(tmp_path / "model.onnx", model, test_images, 128)
    assert compared["images"] == 256 and abs(compared["top1_onnxruntime"] - compared["top1_pytorch"]) <= 0.05


def test_vit_hf_folder_loads_in_plain_timm_with_the_healed_logits(runs, tmp_path):
    run = runs[1]["unstructured"]
    folder = run / "hf"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = read_json(folder / "config.json")  # a name plain timm knows, with the embedded model's shape
    assert config["architecture"] == "vit_base_patch16_224" and config["model_args"]["embed_dim"] == 128
    from safetensors.torch import load_file

    assert not any(name.startswith("mask") for name in load_file(folder / "model.safetensors"))
    healed = starfish_cli.load(run)
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = healed(images)
    load = 'import timm\nmodel = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()'
    assert outputs_in_plain_python(load, 'model(expected["inputs"])', folder, images, expected, tmp_path) <= 1e-5
    card = parsed_card(folder)
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert "| healer | starfish" in card.text and "| pattern | unstructured |" in card.text
