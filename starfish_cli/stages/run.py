"""One invocation of a stage: its steps in order (prune → heal → eval), each handing its result to the
next, then the report; and the body of every stage's @hydra.main, which turns bad input into one line
and removes what the invocation wrote."""

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from starfish_cli.evaluation.cache import SweepCache
from starfish_cli.reporting.report import PLOT_FILES, REPORT_FILES, print_summary, write_report
from starfish_cli.runtime import distributed
from starfish_cli.runtime.atomic import write_text_atomically
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.stages.eval import evaluate_models
from starfish_cli.stages.export import export_run
from starfish_cli.stages.heal import heal
from starfish_cli.stages.inputs import prepare
from starfish_cli.stages.onloaded import run_onloaded
from starfish_cli.stages.layout import CONFIG_FILE, RunFolders, finished, has_results
from starfish_cli.stages.prune import prune
from starfish_cli.stages.record import assemble_report
from starfish_cli.stages.values import Context, Evaluation, Healed, Inputs, Pruned
from starfish_cli.tracking import MetricLoggers, eval_metrics, flatten, heal_losses, sparsity_metrics

log = logging.getLogger("starfish")

RUN = ("prune", "heal", "eval")


def execute(context: Context, inputs: Inputs, steps: tuple[str, ...]) -> dict[str, Any]:
    loggers = open_loggers(context)
    try:
        report = run_steps(context, inputs, steps, loggers)
        loggers.close()
    except BaseException:
        loggers.close(failed=True)
        raise
    finally:  # a failed invocation removes what the loggers wrote in the run folder
        for path in loggers.written():
            context.folders.record(path)
    return report


def whole_model(context: Context, inputs: Inputs, steps: tuple[str, ...]) -> tuple[Pruned, Healed | None,
                                                                                   Evaluation | None]:
    """The steps asked for, one after the other, on models held whole (or the checkpoints earlier stages wrote)."""
    pruned = inputs.pruned if inputs.pruned is not None else prune(context, inputs.pruner, inputs.calibration)
    healed = heal(context, inputs.healer, pruned, inputs.calibration) if "heal" in steps else inputs.healed
    evaluation = (evaluate_models(context, pruned, healed, inputs.eval_data, inputs.eval_workers)
                  if "eval" in steps else None)
    return pruned, healed, evaluation


def layer_by_layer(context: Context, inputs: Inputs, steps: tuple[str, ...]) -> tuple[Pruned, Healed, Evaluation]:
    """Prune, heal and evaluate in one pass over the decoder layers (`onload`): the same step results."""
    return run_onloaded(context, inputs)


PIPELINES = {"whole_model": whole_model, "layer_by_layer": layer_by_layer}  # chosen once, by `Context.onloaded`


def run_steps(context: Context, inputs: Inputs, steps: tuple[str, ...], loggers: MetricLoggers) -> dict[str, Any]:
    pipeline = PIPELINES["layer_by_layer" if context.onloaded is not None else "whole_model"]
    pruned, healed, evaluation = pipeline(context, inputs, steps)
    loggers.log_metrics(sparsity_metrics(pruned.metadata["sparsity"]))
    if "heal" in steps:
        for step, metrics in heal_losses(healed.metadata.get("healing", {}).get("loss_history")):
            loggers.log_metrics(metrics, step)
    if evaluation is not None:
        loggers.log_metrics(eval_metrics(evaluation.results["models"]))
    report = assemble_report(context, pruned, healed, evaluation, inputs.calibration)
    if context.world.is_main:  # only rank 0 writes
        run_dir = context.folders.run_dir
        write_text_atomically(context.folders.record(run_dir / CONFIG_FILE),
                              OmegaConf.to_yaml(context.cfg, resolve=True))
        for name in (*REPORT_FILES, *PLOT_FILES):  # a failed invocation removes them again
            context.folders.record(run_dir / name)
        write_report(run_dir, report)
        if evaluation is not None:
            print_summary(report)
        log.info("run folder: %s", run_dir)
    return report


def open_loggers(context: Context) -> MetricLoggers:
    """The loggers of `cfg.logger` (rank 0 only; the others log nothing), with the resolved config as params."""
    nodes = context.cfg.get("logger")
    if not context.world.is_main or not nodes:
        return MetricLoggers()
    run_dir, output_root = context.folders.run_dir, Path(context.cfg.output_root)
    try:
        run_label = str(run_dir.resolve().relative_to(output_root.resolve()))
    except ValueError:  # a hydra.run.dir of the user's own, outside output_root
        run_label = str(run_dir)
    loggers = MetricLoggers.build(OmegaConf.to_container(nodes, resolve=True), run_dir=run_dir,
                                  output_root=output_root, run_label=run_label,
                                  experiment_choice=HydraConfig.get().runtime.choices.get("experiment"))
    loggers.log_params(flatten(OmegaConf.to_container(context.cfg, resolve=True)))
    return loggers


def run_stage(cfg: DictConfig, steps: tuple[str, ...], sweep_cache: SweepCache | None = None) -> str | None:
    """The body of every stage's @hydra.main. Bad input: one line on stderr, nothing left behind,
    and the message returned (the CLI then exits with code 2). `sweep_cache`: what the runs of one process share."""
    folders = RunFolders.of(cfg, steps)
    earlier_results = has_results(folders.run_dir)
    if steps == RUN and cfg.skip_finished and finished(folders, cfg):
        log.info("skipping %s: a finished run with this exact config (skip_finished=false reruns it)",
                 folders.run_dir)
        return None
    try:
        if steps == ("export",):  # reads a finished run: no dense model, calibration or pruning
            export_run(cfg, folders)
        else:
            context, inputs = prepare(cfg, folders, steps, sweep_cache)
            execute(context, inputs, steps)
    except StarfishError as error:
        if distributed.launched_world().is_main:
            folders.discard(earlier_results)
        message = str(error)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:  # say which run of the sweep failed; the others go on
            message = f"run {hydra_cfg.job.num} ({','.join(hydra_cfg.overrides.task) or 'defaults'}): {message}"
        print(f"starfish: error: {message}", file=sys.stderr)
        return message
    return None
