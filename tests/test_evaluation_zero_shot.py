"""Zero-shot tasks through lm-evaluation-harness (eval.tasks): a local task (lm-eval's YAML format over a local
JSON file, never the hub) gives, for the dense, pruned and healed models of a run, what `lm_eval.simple_evaluate`
gives when run by hand on the same models; the scores reach report.json, report.md and `starfish report`."""

import json

import pytest

from conftest import read_json, run_in_process

pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's HF model

TASK = "tiny_choice"


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    """A four-way multiple-choice task of 24 questions: the continuation that repeats the prompt's first noun
    is the answer in a quarter of them, so a language model has something to get right."""
    folder = tmp_path_factory.mktemp("tasks")
    nouns = "dog cat sun moon tree river stone house ship bird".split()
    rows = []
    for i in range(24):
        first, second = nouns[i % 10], nouns[(3 * i + 1) % 10]
        rows.append({"question": f"The {first} and the {second} saw the", "answer": i % 4,
                     "choices": [f" {word}" for word in (first, second, "table", "seven")]})
    (folder / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'questions.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{question}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: answer\nmetric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


def by_hand(model, tokenizer, task_folder) -> dict[str, float]:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    output = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), tasks=[TASK],
                                     task_manager=TaskManager(include_path=str(task_folder), include_defaults=False),
                                     num_fewshot=0,
                                     bootstrap_iters=0, log_samples=False)
    return {metric: output["results"][TASK][f"{metric},none"] for metric in ("acc", "acc_norm")}


@pytest.mark.slow
def test_a_local_task_scores_as_lm_eval_by_hand_for_dense_pruned_and_healed(task_folder, tmp_path, capfd):
    import starfish_cli
    from starfish_cli.models import build_model
    from starfish_cli.models.causal_lm import load_tokenizer

    run = tmp_path / "run"
    result = run_in_process("run", "model=lm_reference", "calib.count=8", "healer.epochs=1", "eval.max_images=4",
                            "eval.speed=false", f"eval.tasks=[{TASK}]", f"eval.include_path={task_folder}",
                            f"hydra.run.dir={run}", cwd=tmp_path)
    console = result.stdout + result.stderr + "".join(capfd.readouterr())  # tmp_path is outside any repository
    assert "Running loglikelihood requests" not in console and "not a git repository" not in console
    report = read_json(run / "report.json")
    scores = report["zero_shot"]["models"]
    assert report["zero_shot"]["samples"] == {TASK: 24} and report["zero_shot"]["num_fewshot"] == 0
    dense = build_model({"family": "causal_lm", "name": "lm_reference"})
    tokenizer = load_tokenizer(dense)
    models = {"dense": dense, "pruned": starfish_cli.load(run / "pruned.safetensors"), "healed": starfish_cli.load(run)}
    for name, model in models.items():
        assert scores[name][TASK] == pytest.approx(by_hand(model, tokenizer, task_folder), abs=1e-12), name
    assert scores["pruned"][TASK] != scores["dense"][TASK]  # pruning 75% changes the answers: a real comparison

    markdown = (run / "report.md").read_text()
    assert "## Zero-shot tasks (lm-evaluation-harness" in markdown
    assert f"| {TASK} | acc_norm | 24 | {100 * scores['dense'][TASK]['acc_norm']:.2f} |" in markdown
    assert "zero-shot tasks" in result.stdout  # the run's own summary shows them
    summary = run_in_process("report", str(tmp_path), cwd=tmp_path)
    assert f"{TASK} acc_norm" in (tmp_path / "summary.md").read_text() and "zero-shot tasks" in summary.stdout


def test_an_unknown_task_is_one_line_naming_where_tasks_come_from(task_folder, monkeypatch):
    from starfish_cli.evaluation.zero_shot import ZeroShot
    from starfish_cli.runtime.errors import StarfishError

    indexed = []

    class Index:  # lm-eval's task index (its built-in tasks take seconds to index): the user's folder, or all
        def __init__(self, include_path=None, include_defaults=True):
            indexed.append(include_defaults)
            self.all_tasks = [TASK] + (["boolq", "rte"] if include_defaults else [])

    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Index)
    ZeroShot([TASK], str(task_folder)).check()
    assert indexed == [False]  # found in the user's folder: lm-eval's own tasks never indexed
    ZeroShot([TASK, "boolq"], str(task_folder)).check()
    with pytest.raises(StarfishError, match=f"unknown lm-eval task 'no_such_task'.*under eval.include_path={task_folder}"):
        ZeroShot([TASK, "no_such_task"], str(task_folder)).check()


def test_a_task_batch_holds_a_bounded_number_of_logits_whatever_the_evaluation_batch():
    from torch import nn

    from starfish_cli.evaluation.zero_shot import REQUEST_TOKENS, TASK_LOGITS_BYTES, ZeroShot

    class WithHead(nn.Module):
        def __init__(self, vocabulary):
            super().__init__()
            self.head = nn.Linear(2, vocabulary, bias=False)

        def get_output_embeddings(self):
            return self.head

    large = ZeroShot(["task"], batch_size=256).requests_per_batch(WithHead(49_152))  # SmolLM2's vocabulary
    assert large == 10 and large * REQUEST_TOKENS * 49_152 * 4 <= TASK_LOGITS_BYTES
    assert ZeroShot(["task"], batch_size=8).requests_per_batch(WithHead(100)) == 8  # a small vocabulary: as asked
    assert ZeroShot(["task"], batch_size=8).requests_per_batch(WithHead(10**8)) == 1
