"""Zero-shot tasks through lm-evaluation-harness, as the pruned-LLM papers report them (BoolQ, RTE, HellaSwag,
WinoGrande, ARC-e, ARC-c, OpenBookQA; acc and acc_norm): the dense, pruned and healed models in one process,
each wrapped as lm-eval's own HF model, on lm-eval's tasks, starfish's offline ones (wordnet_definitions) or a
folder of the user's task YAMLs."""

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from torch import nn

from starfish_cli.evaluation.offline_tasks import OFFLINE_TASKS, write_task
from starfish_cli.runtime.errors import StarfishError, first_line
from starfish_cli.runtime.memory import release_freed_memory

log = logging.getLogger("starfish")

# lm-eval runs a batch of requests through the model whole and log-softmaxes its vocabulary-wide logits: the batch
# is bounded so that each takes about this much (multiple-choice requests are tens of tokens; lm-eval pads to the longest)
TASK_LOGITS_BYTES = 128 * 2**20
REQUEST_TOKENS = 64


def _lm_eval():
    try:
        import lm_eval
        import lm_eval.evaluator
        import lm_eval.models.huggingface
        import lm_eval.tasks
    except ImportError as error:
        raise StarfishError("eval.tasks needs lm-evaluation-harness: pip install 'starfish-cli[tasks]'") from error
    return lm_eval


@dataclass
class ZeroShot:
    """`tasks` (lm-eval task or group names, or starfish's offline tasks) with `num_fewshot` examples in context
    and at most `task_limit` examples per task; `include_path`: a folder of the user's own task YAMLs (lm-eval's `--include_path`)."""

    tasks: Sequence[str] = ()
    include_path: str | None = None
    task_limit: int | None = None
    num_fewshot: int = 0
    batch_size: int = 8
    _manager: Any = field(default=None, init=False, repr=False)

    def check(self) -> None:
        """Every task name known to lm-eval (or found under `include_path`, or one of starfish's offline tasks,
        built now into the cache), before any model runs."""
        lm_eval = _lm_eval()
        offline = [write_task(name) for name in dict.fromkeys(self.tasks) if name in OFFLINE_TASKS]
        include = [str(path) for path in offline] + ([self.include_path] if self.include_path else [])
        if include:  # these folders alone first: lm-eval's ~15,000 built-in tasks take seconds to index
            self._manager = lm_eval.tasks.TaskManager(include_path=include, include_defaults=False)
        if self._manager is None or not set(self.tasks) <= set(self._manager.all_tasks):
            self._manager = lm_eval.tasks.TaskManager(include_path=include or None)
        known = set(self._manager.all_tasks)
        unknown = [name for name in self.tasks if name not in known]
        if unknown:
            where = f" or under eval.include_path={self.include_path}" if self.include_path else ""
            raise StarfishError(f"unknown lm-eval task {unknown[0]!r}: give lm-eval's task names{where} "
                                f"(`lm_eval ls tasks`), starfish's own ({', '.join(OFFLINE_TASKS)}), "
                                "or eval.include_path=DIR for your own task YAMLs")

    def evaluate(self, models: Mapping[str, nn.Module], tokenizer, device: torch.device, precision: torch.dtype,
                 seed: int) -> dict[str, Any]:
        """{"models": {name: {task: {metric: value}}}, "samples": {task: n}, …}: lm-eval's `simple_evaluate` on
        each model, seeded; acc, acc_norm and every other metric the task defines (filter `none`)."""
        lm_eval = _lm_eval()
        if self._manager is None:
            self.check()
        results, samples = {}, {}
        for name, model in models.items():
            wrapped = lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer,
                                                      batch_size=self.requests_per_batch(model))
            autocast = torch.autocast(device.type, dtype=precision) if precision != torch.float32 \
                else contextlib.nullcontext()
            with autocast, quiet(lm_eval):
                try:
                    output = lm_eval.simple_evaluate(
                        model=wrapped, tasks=list(self.tasks), num_fewshot=self.num_fewshot, limit=self.task_limit,
                        task_manager=self._manager, bootstrap_iters=0, log_samples=False, random_seed=seed,
                        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
                except (OSError, ValueError, KeyError, RuntimeError) as error:  # e.g. a hub dataset offline
                    raise StarfishError(f"lm-eval could not run {', '.join(self.tasks)} ({first_line(error, 200)}): "
                                        "its datasets need the hub, or a local task YAML") from error
            results[name] = task_metrics(output["results"])
            samples = {task: int(count["effective"]) for task, count in output.get("n-samples", {}).items()}
            del wrapped, output
            release_freed_memory()  # the next model's batches start from what this one freed
            log.info("zero-shot %s: %s", name, ", ".join(
                f"{task} {metrics.get('acc', float('nan')):.4f}" for task, metrics in results[name].items()))
        return {"models": results, "samples": samples, "num_fewshot": self.num_fewshot,
                "task_limit": self.task_limit, "lm_eval": lm_eval.__version__}


    def requests_per_batch(self, model: nn.Module) -> int:
        """`batch_size`, at most what keeps a batch's logits near TASK_LOGITS_BYTES (SmolLM2's 49,152-way
        vocabulary: 10 requests, where the evaluation's 256 windows took 9.5 GB)."""
        vocabulary = model.get_output_embeddings().weight.shape[0]
        return max(1, min(self.batch_size, TASK_LOGITS_BYTES // (4 * vocabulary * REQUEST_TOKENS)))


@contextlib.contextmanager
def quiet(lm_eval):
    """lm-eval without its console noise: its progress bars (tqdm, on sys.stderr; starfish logs each model's
    result) and the `git describe` it runs to record the working directory's commit, whose "fatal: not a git
    repository" reaches the terminal outside a repository (the report records lm-eval's version instead)."""
    with contextlib.redirect_stderr(io.StringIO()), \
            mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None):
        yield


def task_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """lm-eval's `results` ("acc,none": 0.61, "acc_stderr,none": "N/A", …) → {task: {"acc": 0.61, …}}."""
    metrics = {}
    for task, values in results.items():
        metrics[task] = {key.split(",")[0]: float(value) for key, value in values.items()
                         if "," in key and key.endswith(",none") and "_stderr" not in key
                         and isinstance(value, int | float)}
    return metrics
