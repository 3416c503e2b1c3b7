"""The benchmark and GPU-check scripts run end to end (smoke runs on tiny sizes; no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_fmnist

pytestmark = pytest.mark.slow  # the installed `starfish` in subprocesses

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(*args, cwd):
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@needs_fmnist
def test_bench_heal_prints_ratios(tmp_path):
    printed = run_script(str(SCRIPTS / "bench_heal.py"), "--images", "64", "--epochs", "2", "--repeats", "1",
                         cwd=tmp_path)
    assert printed.count("the floor's time") == 2 and "faster than the reference loop" in printed
    assert "peak memory" in printed


@needs_fmnist
def test_bench_eval_prints_ratio(tmp_path):
    printed = run_script(str(SCRIPTS / "bench_eval.py"), "--images", "256", "--repeats", "1", cwd=tmp_path)
    assert "cost ratio" in printed


def test_gpu_check_code_path_on_cpu(tmp_path):
    run_script(str(SCRIPTS / "gpu_check.py"), str(tmp_path / "out"), "--device", "cpu",
               "--model", "vit_tiny_patch16_224", "--images", "4", cwd=tmp_path)
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert figures["heal_bf16_images_per_second"] > 0 and "prune_sparsegpt_unstructured_seconds" in figures


def test_the_lm_rehearsal_goes_layer_by_layer_and_the_healed_folder_loads(tmp_path):
    """A tiny folder of the rehearsal's kind (the real one is 3.4B): written shard by shard, pruned, healed and
    evaluated layer by layer, the healed folder's perplexity in plain transformers that of the run's healed model."""
    pytest.importorskip("transformers")
    printed = run_script(str(SCRIPTS / "scale_rehearsal_lm.py"), "--folder", str(tmp_path / "model"), "--hidden", "64",
                         "--intermediate", "128", "--layers", "2", "--heads", "4", "--vocabulary", "2048",
                         "--pruners", "wanda", "--onload", "true", "--out", str(tmp_path / "out"), cwd=tmp_path)
    summary = json.loads((tmp_path / "out" / "rehearsal.json").read_text())
    run = summary["runs"]["wanda"]
    assert len(run["onloading"]["seconds_per_layer"]) == 2 and run["onloading"]["bytes_read"] > 0
    assert run["transformers_perplexity"] == pytest.approx(run["accuracy"]["healed"]["perplexity"], rel=0.02)  # bf16
    assert [row["model"] for row in summary["extrapolated"]] == ["Llama-2-7B", "Llama-2-70B"]
    assert "| wanda |" in printed and not (tmp_path / "out" / "wanda" / "healed").exists()


def test_scale_rehearsal_reports_every_stage_and_extrapolates(tmp_path):
    printed = run_script(str(SCRIPTS / "scale_rehearsal.py"), "--model", "vit_tiny_patch16_224", "--calib", "4",
                         "--eval", "8", "--classes", "2", "--batch-size", "4", "--folder", str(tmp_path / "images"),
                         "--out", str(tmp_path / "out"), cwd=tmp_path)
    summary = json.loads((tmp_path / "out" / "rehearsal.json").read_text())
    assert set(summary["stages"]) == {"calibration", "prune", "heal", "eval"}
    assert summary["stages"]["eval"]["paper_images"] == 50_000 and summary["paper_total_hours"] > 0
    assert 0.0 <= summary["stages"]["eval"]["waiting_for_data"] < 1.0
    assert "| total |" in printed and len(list((tmp_path / "images" / "val").rglob("*.JPEG"))) == 8


def test_the_reference_lm_trainer_measures_perplexity_as_starfish_does():
    """train_reference_lm.py's evaluation (what it prints and stores with the weights) on a tiny random Llama:
    the perplexity of every next token of the stream's windows, as the evaluation metric computes it."""
    pytest.importorskip("transformers")
    import importlib.util

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from starfish_cli.data.tokens import windows
    from starfish_cli.evaluation.metrics import next_token_nll, perplexity

    spec = importlib.util.spec_from_file_location("train_reference_lm", SCRIPTS / "train_reference_lm.py")
    trainer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=16)).eval()
    stream = torch.randint(0, 64, (200,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = windows(stream, 16)
        nll = next_token_nll(model(input_ids=batch).logits, batch)
    expected = perplexity(nll.sum().item(), nll.numel())
    assert trainer.evaluate(model, stream, 16) == pytest.approx(expected, rel=1e-6)
    assert 32 < expected < 128  # random weights over 64 tokens: near 64


def test_corpus_tasks_are_four_way_questions_from_the_test_split_that_lm_eval_finds(tmp_path, monkeypatch):
    """make_corpus_tasks.py: every question's context and right answer join into a held-out (test) document,
    the wrong answers come from other documents, and lm-eval reads both task YAMLs."""
    import importlib.util

    from starfish_cli.data import fortunes, jargon

    spec = importlib.util.spec_from_file_location("make_corpus_tasks", SCRIPTS / "make_corpus_tasks.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    monkeypatch.setattr(sys, "argv", ["make_corpus_tasks.py", str(tmp_path), "--questions", "30"])
    maker.main()
    test_fortunes = set(fortunes.split_fortunes(fortunes.read_fortunes())["test"])
    test_entries = fortunes.split_fortunes(jargon.read_jargon())["test"]
    for name in ("fortune_ending", "jargon_gloss"):
        questions = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert len(questions) == 30 and {len(q["choices"]) for q in questions} == {4}
        assert len({q["answer"] for q in questions}) > 1  # the right answer is not always in one place
        for question in questions:
            right = question["context"] + question["choices"][question["answer"]]
            if name == "fortune_ending":
                assert right in test_fortunes
            else:
                assert any(entry.startswith(question["context"]) and
                           " ".join(entry.split()).startswith(" ".join(right.split())) for entry in test_entries)
            assert len(set(question["choices"])) == 4
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
    manager = lm_eval_tasks.TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert {"fortune_ending", "jargon_gloss"} <= set(manager.all_tasks)
