"""The stage table: each `starfish` stage is a list of steps run under one primary config.

Importing this package is cheap (the CLI lists stages from it); `launch` does the work.
"""

from dataclasses import dataclass

from starfish_cli.stages.resolvers import register as _register_resolvers

_register_resolvers()  # before Hydra composes: the run-folder path uses them


@dataclass(frozen=True)
class Stage:
    steps: tuple[str, ...]  # () for `report`, which reads finished runs
    config_name: str  # primary config in starfish_cli/configs
    help: str


STAGES = {
    "prune": Stage(("prune",), "prune", "prune the model (pruned.safetensors, shared by every healer)"),
    "heal": Stage(("heal",), "starfish", "heal the pruned model by internal-state alignment (healed.safetensors)"),
    "eval": Stage(("eval",), "starfish", "evaluate dense, pruned and healed models (report.json, report.md)"),
    "run": Stage(("prune", "heal", "eval"), "starfish", "prune, heal and evaluate in one process"),
    "export": Stage(("export",), "starfish", "compress the healed model to ship (export/: model.safetensors, "
                    "model.json; format=onnx: model.onnx; format=hf: hf/ for timm or transformers)"),
    "report": Stage((), "report", "aggregate every run under DIR: summary.md, summary.csv, plots (starfish report DIR)"),
}


def check_config(cfg, steps: tuple[str, ...]) -> None:
    """What a stage checks from its config alone (stages.settings.check_config), imported when first used."""
    from starfish_cli.stages.settings import check_config as check

    check(cfg, steps)


def launch(name: str) -> int:
    """Run stage `name` through its @hydra.main (argv already rewritten by the CLI); the exit code."""
    import hydra

    from starfish_cli.runtime.memory import return_large_frees

    return_large_frees()  # before any model or data: what a stage frees does not stay resident
    stage = STAGES[name]
    failures: list[str] = []
    shared = {}  # what the runs of a sweep in this process reuse (evaluation.cache), made with the first

    def task(cfg) -> None:
        if stage.steps:
            from starfish_cli.evaluation.cache import SweepCache
            from starfish_cli.stages.run import run_stage

            error = run_stage(cfg, stage.steps, shared.setdefault("sweep_cache", SweepCache()))
        else:
            from starfish_cli.stages.report import report_folder

            error = report_folder(cfg)
        if error:
            failures.append(error)

    task.__module__ = f"starfish_cli.stages.{name}"  # Hydra names the job (and its log file) after it
    hydra.main(version_base="1.3", config_path="pkg://starfish_cli.configs", config_name=stage.config_name)(task)()
    return 2 if failures else 0
