"""The causal_lm family: tiny Llama and GPT-2 folders written by save_pretrained, through the pipeline."""

import math

import pytest
import torch

from conftest import read_json, run_in_process

transformers = pytest.importorskip("transformers")

from starfish_cli.evaluation.metrics import Perplexity  # noqa: E402
from starfish_cli.models import build_model, structure_of  # noqa: E402
from starfish_cli.models.causal_lm import REFERENCE_DIR  # noqa: E402

CONTEXT = 16


def tiny_model(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=CONTEXT))
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=CONTEXT, bos_token_id=0, eos_token_id=0))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    tokenizer = transformers.AutoTokenizer.from_pretrained(REFERENCE_DIR)
    tiny_model(request.param, len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    words = "the quick brown fox jumps over the lazy dog while a small cat sleeps in the warm sun".split()
    for name, count in (("train.txt", 300), ("test.txt", 120)):
        (folder / name).write_text(" ".join(words[(i * 7) % len(words)] for i in range(count)) + "\n")
    (folder / "empty.txt").write_text("")
    return folder


def test_side_by_side_blocks_equal_the_models_forward(tiny_folder):
    model = build_model({"family": "causal_lm", "name": str(tiny_folder)})
    structure = structure_of(model)
    assert structure.family == "causal_lm" and len(structure.prunable_layers()) in (8, 14)
    assert all(isinstance(layer, torch.nn.Linear) for layer in structure.prunable_layers().values())
    tokens = torch.randint(0, 100, (3, CONTEXT))
    with torch.no_grad():
        logits, states = structure.forward_with_states(tokens)
        hidden = structure.embed(tokens)
        for index, state in enumerate(states):
            hidden = structure.run_block(index, hidden)
            torch.testing.assert_close(hidden, state, rtol=0, atol=0)
        torch.testing.assert_close(structure.head(hidden), logits, rtol=0, atol=0)
        # states alone stop after the last layer: the LM head never runs
        head_calls = []
        handle = model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
        no_logits, same_states = structure.forward_with_states(tokens, with_outputs=False)
        handle.remove()
    assert no_logits is None and not head_calls
    assert all(torch.equal(a, b) for a, b in zip(states, same_states, strict=True))


def test_perplexity_is_exp_of_mean_next_token_nll():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])  # one window of 3 tokens
    tokens = torch.tensor([[0, 1, 1]])
    metric = Perplexity()
    rows = metric.rows(logits)  # a row per predicting position: the logits stand for the states the head maps
    sums, predictions = metric.count(rows, rows.argmax(-1), metric.targets(tokens))
    # predicted: token 1 from position 0, token 1 from position 1
    nll = -math.log(1 / (math.e**2 + 2)) - math.log(math.e / (math.e + 2))
    results = Perplexity().results(sums, predictions)
    assert predictions == 2 and results["perplexity"] == pytest.approx(math.exp(nll / 2))
    assert results["top1"] == 50.0 and results["agreement"] == 100.0


@pytest.mark.slow
def test_run_on_a_save_pretrained_folder(tiny_folder, text_files, tmp_path):
    run_dir = tmp_path / "run"
    run_in_process("run", "model=hf_causal_lm", f"model.name={tiny_folder}", "data=text_files",
                   f"data.train={text_files / 'train.txt'}", f"data.test={text_files / 'test.txt'}",
                   "calib.count=4", "calib.seq_len=8", "healer.epochs=2", "healer.batch_size=2", "eval.speed=false",
                   "pruner.sparsity=0.5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    report = read_json(run_dir / "report.json")
    accuracy = report["accuracy"]
    assert accuracy["images"] > 0
    assert all(math.isfinite(accuracy[name]["perplexity"]) for name in ("dense", "pruned", "healed"))
    assert accuracy["dense"]["agreement"] == 100.0 and len(accuracy["dense"]["block_cosine"]) == 2
    assert report["sparsity"]["prunable"] == pytest.approx(0.5, abs=0.01)
    assert report["calibration"]["seq_len"] == 8 and report["calibration"]["count"] == 4
    offsets = read_json(run_dir / "calibration_indices.json")["indices"]
    assert len(offsets) == 4 and all(offset % 8 == 0 for offset in offsets)
    assert "| model | perplexity |" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("overrides,message", [
    (["model.name=nobody/no-such-model-xyz"], "could not load causal LM"),
    (["calib.seq_len=4096"], "longer than the model's context"),
    (["data=text_files", "data.train=EMPTY", "data.test=EMPTY"], "has no text"),
])
def test_bad_input_is_one_line_and_exit_2(overrides, message, text_files, tmp_path):
    overrides = [item.replace("EMPTY", str(text_files / "empty.txt")) for item in overrides]
    result = run_in_process("run", "model=lm_reference", *overrides, "eval.speed=false",
                            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "run" / "pruned.safetensors").exists()


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_pruners_cut_every_decoder_linear(tiny_folder, pruner, pattern):
    """Each pruner, unstructured and N:M, on the decoder layers' linears; embeddings and head untouched."""
    from starfish_cli.pruning import PRUNERS

    model = build_model({"family": "causal_lm", "name": str(tiny_folder)})
    structure = structure_of(model)
    head = model.get_output_embeddings().weight.clone()
    calibration = [torch.randint(0, 100, (4, CONTEXT), generator=torch.Generator().manual_seed(1))]
    masks = PRUNERS.build({"name": pruner, "sparsity": 0.5, "pattern": pattern}).prune(model, calibration)
    assert set(masks) == set(structure.prunable_layers())
    for name, layer in structure.prunable_layers().items():
        kept = masks[name]
        assert kept.float().mean().item() == pytest.approx(0.5, abs=0.02), name
        assert torch.all(layer.weight[~kept] == 0), name
        if pattern == "2:4":  # two of every four consecutive inputs kept, in every row
            assert torch.all(kept.view(kept.shape[0], -1, 4).sum(-1) == 2), name
    assert torch.equal(model.get_output_embeddings().weight, head)
    with torch.no_grad():
        assert torch.isfinite(model(calibration[0]).logits).all()


@pytest.mark.slow
def test_windows_default_to_the_context_at_most_2048_and_follow_seq_len():
    from starfish_cli.data import DATASETS
    from starfish_cli.data.calibration import CalibrationSampler
    from starfish_cli.runtime.errors import StarfishError

    structure = structure_of(build_model({"family": "causal_lm", "name": "lm_reference"}))
    preprocessing = structure.preprocessing()
    assert preprocessing["context"] == 128 and preprocessing["window"] == 128
    fortunes = DATASETS.build({"name": "fortunes"})
    whole, _ = fortunes.evaluation_items(None, **preprocessing)
    halves, _ = fortunes.evaluation_items(None, **preprocessing, seq_len=64)
    assert halves[0][1].shape == (64,) and len(halves) in (2 * len(whole), 2 * len(whole) + 1)  # non-overlapping
    assert torch.equal(torch.cat([halves[0][1], halves[1][1]]), whole[0][1])
    with pytest.raises(StarfishError, match="eval.seq_len=256 is longer than the model's context of 128"):
        fortunes.evaluation_items(None, **preprocessing, seq_len=256)
    windows, _, described = fortunes.calibration_items(CalibrationSampler(count=2, seq_len=None), 0, None,
                                                       **preprocessing)
    assert described["seq_len"] == 128 and windows[0][1].shape == (128,)
