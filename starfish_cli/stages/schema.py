"""The top-level settings of a run and its `eval` node, declared as the components declare their options (a
dataclass field each, its kind and range in the annotation) and checked the same way: one line for a value of
the wrong kind or range. A field whose `metadata` says `results=False` does not change a run's results: it stays
out of the run-folder names (stages.resolvers)."""

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from omegaconf import OmegaConf

from starfish_cli.onloading.states import PLACEMENTS
from starfish_cli.registry import Range, problem
from starfish_cli.runtime.distributed import STRATEGIES
from starfish_cli.runtime.errors import StarfishError

NEUTRAL = {"results": False}  # where the results go, how fast they come, or whether they are made again


@dataclass(frozen=True)
class RunSettings:
    seed: Annotated[int, Range(0)] = 0
    device: str = field(default="auto", metadata=NEUTRAL)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    onload: Literal["auto", True, False] = "auto"
    onload_states: Literal[PLACEMENTS] = "auto"
    memory_budget: Literal["auto"] | Annotated[float, Range(0, low_open=True)] = "auto"
    dist_strategy: Literal[STRATEGIES] = "ddp"
    dist_backend: str = field(default="auto", metadata=NEUTRAL)
    output_root: str = field(default="outputs", metadata=NEUTRAL)
    pruned: str | None = field(default=None, metadata=NEUTRAL)
    healed: str | None = field(default=None, metadata=NEUTRAL)
    skip_finished: bool = field(default=True, metadata=NEUTRAL)


@dataclass(frozen=True)
class EvalSettings:
    batch_size: Annotated[int, Range(1)] = field(default=256, metadata=NEUTRAL)
    max_images: Annotated[int, Range(1)] | None = None
    seq_len: Annotated[int, Range(2)] | None = None
    tasks: Sequence[str] = ()
    include_path: str | None = None
    task_limit: Annotated[int, Range(1)] | None = None
    num_fewshot: Annotated[int, Range(0)] = 0
    num_workers: Literal["auto"] | Annotated[int, Range(0)] = field(default="auto", metadata=NEUTRAL)
    speed: bool = field(default=True, metadata=NEUTRAL)


def checked(cls: type, node: Mapping[str, Any], prefix: str = "") -> Any:
    """`cls` built from a config node's declared keys (the node's others belong to other nodes), each checked
    against its declaration first: a StarfishError of one line for the first that does not fit."""
    declared = {item.name: item for item in dataclasses.fields(cls)}
    chosen = {key: _plain(node[key]) for key in declared if key in node}
    for key, value in chosen.items():
        tail = problem(declared[key].type, value)
        if tail:
            raise StarfishError(f"{prefix}{key}={value!r}{'' if tail.startswith(':') else ' '}{tail}")
    return cls(**chosen)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def neutral_keys() -> set[str]:
    """The declared keys that do not change results, as overrides name them (`eval.batch_size`)."""
    return {prefix + item.name for cls, prefix in ((RunSettings, ""), (EvalSettings, "eval."))
            for item in dataclasses.fields(cls) if item.metadata.get("results", True) is False}
