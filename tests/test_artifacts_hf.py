"""`starfish export format=hf`: folders that plain timm and transformers load (in a Python where starfish
cannot be imported) with the healed model's outputs, their model card, the upload to the hub (at the network
boundary only), and the models that cannot go there."""

import copy
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import starfish_cli
from conftest import outputs_in_plain_python, parsed_card, read_json, run_cli, run_in_process
from starfish_cli.artifacts.checkpoint import save_checkpoint
from starfish_cli.artifacts.hf import check_folder
from starfish_cli.models import build_model, structure_of
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.stages.export import export_run
from starfish_cli.stages.layout import RunFolders

LM_RUN = ["model=lm_reference", "calib.count=8", "healer.epochs=1", "eval.max_images=4", "eval.speed=false",
          "hydra.run.dir=run"]
VIT_CONFIG = {"name": "vit_fmnist", "pretrained": True, "checkpoint_path": None, "kwargs": {}, "data_config": {}}
@pytest.mark.slow
def test_a_language_model_run_exports_both_formats_loads_and_compiles(tmp_path):
    """`starfish export` (both formats) and `starfish_cli.load` reach the causal-LM family through the model
    registry; the hf folder loads in plain transformers with the healed logits; compile=true compiles its
    decoder layers: the same perplexities as the eager run."""
    pytest.importorskip("transformers")
    from starfish_cli.artifacts.checkpoint import load_checkpoint
    from starfish_cli.artifacts.load import rebuild

    run_in_process("run", *LM_RUN, cwd=tmp_path)
    run_in_process("export", *LM_RUN, cwd=tmp_path)
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    checkpoint = load_checkpoint(tmp_path / "run" / "healed.safetensors", "heal")
    exact = rebuild(checkpoint.metadata["model"])
    exact.load_state_dict(checkpoint.weights)
    windows = torch.randint(0, 2048, (4, 128), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the compressed export loads the healed weights bit for bit
        assert torch.equal(starfish_cli.load(tmp_path / "run")(windows).logits, exact(windows).logits)
    result = run_cli("export", *LM_RUN, "format=hf", cwd=tmp_path)  # the subprocess test of `starfish export`
    run, folder = tmp_path / "run", tmp_path / "run" / "hf"
    assert f"exported {folder}" in result.stderr + result.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
    healed = starfish_cli.load(run)
    tokens = torch.randint(0, 2048, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = healed(input_ids=tokens).logits
    load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(folder).eval()\nAutoTokenizer.from_pretrained(folder)")
    difference = outputs_in_plain_python(load, 'model(input_ids=expected["inputs"]).logits', folder, tokens, expected,
                                         tmp_path)
    assert difference <= 1e-5
    card, report = parsed_card(folder), read_json(run / "report.json")
    assert card.data.library_name == "transformers" and {"pruned", "sparse", "starfish"} <= set(card.data.tags)
    assert "| pruner | wanda" in card.text and "75.0% of the prunable weights" in card.text
    assert "8 items of fortunes/train" in card.text and f"{report['recovery']:.4f}" in card.text
    assert f"{report['accuracy']['healed']['perplexity']:.2f}" in card.text
    hub = report["export"]["hf"]
    assert hub["folder"] == "hf" and hub["library"] == "transformers" and hub["check"]["max_output_difference"] <= 1e-5
    assert "accuracy" in report and "## Export for transformers (hf/" in (run / "report.md").read_text()

    run_in_process("run", *LM_RUN[:-1], "compile=true", "hydra.run.dir=compiled", cwd=tmp_path)
    eager, compiled = (read_json(tmp_path / name / "report.json")["accuracy"] for name in ("run", "compiled"))
    for model in ("dense", "pruned", "healed"):
        assert compiled[model]["perplexity"] == pytest.approx(eager[model]["perplexity"], rel=1e-3), model



@pytest.mark.slow
def test_a_structurally_pruned_language_model_is_smaller_faster_and_loads_in_plain_transformers(tmp_path):
    """pruner=structured on lm_reference: a run whose report has prefill and decode speed against dense, the smaller
    model through `starfish_cli.load`, and an hf folder whose config has the new sizes and whose logits, in plain
    transformers, are the healed model's."""
    pytest.importorskip("transformers")
    structured = [*LM_RUN[:4], "eval.speed=true", "pruner=structured", "pruner.heads=0.5", "pruner.mlp=0.5",
                  "pruner.layers=1", "hydra.run.dir=run"]
    run_in_process("run", *structured, cwd=tmp_path)
    run_in_process("export", *structured, "format=hf", cwd=tmp_path)
    run, folder = tmp_path / "run", tmp_path / "run" / "hf"
    report = read_json(run / "report.json")
    generation = report["speed"]["generation"]
    assert generation["prompt_tokens"] == 64 and generation["new_tokens"] == 64  # within lm_reference's 128 tokens
    assert generation["models"]["dense"]["prefill_vs_dense"] == 1.0
    assert all(entry["prefill_tokens_per_second"] > 0 and entry["decode_tokens_per_second"] > 0
               for entry in generation["models"].values())
    sources = [entry["source"] for entry in report["structure"].values()]  # the dense layer each one was
    assert len(sources) == 3 and set(sources) < {0, 1, 2, 3} and sources == sorted(sources)
    sizes = {name: entry["weight_bytes"] for name, entry in report["speed"]["models"].items()}
    assert sizes["healed"] == sizes["pruned"] < 0.7 * sizes["dense"]
    assert "| model | weights MB | prefill tokens/s" in (run / "report.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["intermediate_size"]) == (3, 2, 192)
    healed = starfish_cli.load(run)
    tokens = torch.randint(0, 2048, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = healed(input_ids=tokens).logits
    load = "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(folder).eval()"
    difference = outputs_in_plain_python(load, 'model(input_ids=expected["inputs"]).logits', folder, tokens, expected,
                                         tmp_path)
    assert difference <= 1e-5

@pytest.fixture
def hand_made_run(reference_model, tmp_path):
    """A magnitude-pruned reference ViT as a healed checkpoint, and the export stage run in process on it."""
    model = copy.deepcopy(reference_model)
    pruner = PRUNERS.build({"name": "magnitude", "sparsity": 0.5}, seed=0)
    masks = pruner.prune(model, None)
    save_checkpoint(tmp_path / "healed.safetensors", model, masks, {"model": VIT_CONFIG, "pruner": pruner.describe()})

    def stage(*overrides):
        with initialize_config_module(config_module="starfish_cli.configs", version_base="1.3"):
            cfg = compose("starfish", [f"healed={tmp_path / 'healed.safetensors'}", "export.format=hf", *overrides])
        return export_run(cfg, RunFolders(tmp_path / "run", tmp_path / "run"))

    return stage, tmp_path / "run"


def test_push_to_hub_uploads_the_folder_it_wrote(hand_made_run, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(
        ("upload", kw["repo_id"], sorted(p.name for p in Path(kw["folder_path"]).iterdir()))))
    stage, run = hand_made_run
    section = stage("export.push_to_hub=me/pruned-vit", "export.dtype=bfloat16")
    assert calls == [("create", "me/pruned-vit", {"exist_ok": True}),
                     ("upload", "me/pruned-vit", ["README.md", "config.json", "model.safetensors"])]
    assert section["pushed_to"] == "https://huggingface.co/me/pruned-vit" and section["dtype"] == "bfloat16"
    assert section["check"]["max_output_difference"] <= 1e-5  # against the weights rounded as written
    assert read_json(run / "report.json")["export"]["hf"]["pushed_to"] == section["pushed_to"]
    assert 'timm.create_model("hf-hub:me/pruned-vit"' in parsed_card(run / "hf").text

    def offline(self, repo_id, **kw):
        raise ConnectionError("Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled.\nmore")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    with pytest.raises(StarfishError, match=r"export.push_to_hub=me/pruned-vit: the upload failed \(Cannot reach") as error:
        stage("export.push_to_hub=me/pruned-vit")
    assert "\n" not in str(error.value) and "hf auth login" in str(error.value)


@pytest.mark.parametrize("format,dtype,repo,message", [
    ("safetensors", "float32", "me/pruned", "uploads the folder of export.format=hf"),
    ("hf", "float32", "me/two/slashes", "give a hub model repository"),
    ("hf", "int8", None, "choose one of float32, bfloat16, float16"),
])
def test_bad_hf_options_are_one_line(format, dtype, repo, message):
    from starfish_cli.artifacts.export import check_options

    check_options("hf", "bfloat16", "me/pruned")
    with pytest.raises(StarfishError, match=message):
        check_options(format, dtype, repo)


def test_a_structured_checkpoint_is_refused_before_anything_is_written(hand_made_run, reference_model, tmp_path):
    model = copy.deepcopy(reference_model)
    pruner = PRUNERS.build({"name": "structured", "heads": 0.5, "mlp": 0.5, "criterion": "magnitude"}, seed=0)
    masks = pruner.prune(model, None)
    save_checkpoint(tmp_path / "healed.safetensors", model, masks,
                    {"model": VIT_CONFIG, "pruner": pruner.describe(), "structure": structure_of(model).block_sizes()})
    stage, run = hand_made_run
    with pytest.raises(StarfishError, match="pruned structurally.*starfish_cli.load") as error:
        stage()
    assert "\n" not in str(error.value) and not run.exists()


def test_gpt2_conv1d_weights_go_back_to_their_own_layout(tmp_path):
    transformers = pytest.importorskip("transformers")
    from starfish_cli.models.causal_lm import REFERENCE_DIR

    source = tmp_path / "gpt2"
    tokenizer = transformers.AutoTokenizer.from_pretrained(REFERENCE_DIR)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2,
                                                         n_positions=16, bos_token_id=0,
                                                         eos_token_id=0)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    model = build_model({"family": "causal_lm", "name": str(source)})
    structure = structure_of(model)
    with torch.no_grad():  # pruned rows of the (out × in) matrix: a transposed write would zero columns instead
        for layer in structure.prunable_layers().values():
            layer.weight[: layer.weight.shape[0] // 2] = 0
    structure.save_for_hub(tmp_path / "hf", torch.float32)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert isinstance(loaded.transformer.h[0].attn.c_attn, transformers.pytorch_utils.Conv1D)
    assert check_folder(tmp_path / "hf", structure)["max_output_difference"] <= 1e-5
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"
