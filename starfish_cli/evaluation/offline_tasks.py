"""starfish's own lm-eval tasks, built offline from Debian data on this machine (never the hub): each one's items
and lm-eval task YAML are written into the cache, a folder lm-eval reads as an include path."""

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from starfish_cli.data import dictionary
from starfish_cli.runtime.errors import StarfishError, first_line

ITEMS = 500  # a fixed test: about a minute for a 135M model on a CPU (eval.task_limit takes fewer)


@dataclass(frozen=True)
class OfflineTask:
    """A multiple-choice task: `build()` gives its items ({"choices", "answer", …} rows), `prompt` is lm-eval's
    doc_to_text (Jinja over a row); lm-eval scores each choice as a continuation of the prompt."""

    name: str
    package: str  # the Debian package its data comes from
    build: Callable[[], list[dict]]
    prompt: str

    def config(self, data_file: Path) -> dict:
        """lm-eval's task config: a local JSON file, four choices, acc and acc_norm."""
        return {"task": self.name, "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test",
                "output_type": "multiple_choice", "doc_to_text": self.prompt, "doc_to_choice": "{{choices}}",
                "doc_to_target": "answer",
                "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}
                                for metric in ("acc", "acc_norm")],
                "metadata": {"version": 1.0, "source": f"Debian package {self.package}"}}


OFFLINE_TASKS = {task.name: task for task in (
    OfflineTask("wordnet_definitions", dictionary.PACKAGE, lambda: dictionary.definition_items(count=ITEMS),
                "Definition: {{definition}}.\nWord:"),
)}


def tasks_dir() -> Path:
    """Where the tasks are written: ${XDG_CACHE_HOME:-~/.cache}/starfish/tasks."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "starfish" / "tasks"


def write_task(name: str, root: Path | None = None) -> Path:
    """The folder holding task `name`'s items (`<name>.jsonl`) and config (`<name>.yaml`), built now from the
    machine's data; each file replaced whole, so a concurrent run never reads half of one."""
    task = OFFLINE_TASKS[name]
    try:
        rows = task.build()
    except FileNotFoundError as error:
        raise StarfishError(f"eval.tasks=[{name}] needs Debian's {task.package}: apt-get install {task.package} "
                            f"({first_line(error)})") from error
    folder = (root or tasks_dir()) / name
    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder / f"{name}.jsonl"
    _replace(data_file, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    _replace(folder / f"{name}.yaml", yaml.safe_dump(task.config(data_file), sort_keys=False, allow_unicode=True))
    return folder


def _replace(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as file:
        file.write(text)
    os.replace(file.name, path)
