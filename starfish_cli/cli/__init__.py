"""The `starfish` command: `starfish <stage> [--config FILE] [hydra flags] [key=value ...]`.

Hydra 1.3 has no subcommands, so this rewrites argv (flags first, overrides last) and calls the
stage's own @hydra.main; `-m`, `--cfg job`, `--info` and run folders keep working. It imports only
`stages` (cheap until a stage runs): `starfish --help` loads no torch.
"""

import argparse
import contextlib
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from starfish_cli.cli.arguments import (
    UNSUPPORTED_FLAGS, experiment_arguments, export_shorthand, open_node_overrides, report_overrides, split_flags,
)
from starfish_cli.cli.checks import check_group_choices, check_overrides
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.stages import STAGES, check_config, launch

USAGE = """usage: starfish <stage> [--config FILE] [-m] [-v] [hydra flags] [key=value ...]

stages:
{stages}

examples:
  starfish run                                   # embedded ViT, Wanda 75%, STARFISH healing
  starfish run model=lm_reference                # the embedded language model
  starfish run pruner=magnitude pruner.sparsity=0.9
  starfish prune -m pruner.sparsity=0.5,0.75     # a sweep; then heal -m / eval -m with the same values
  starfish run --config configs/experiment/fmnist_wanda_75.yaml
  starfish run --cfg job                         # print the composed config
  starfish export                                # the healed model, compressed, to ship (format=onnx too)
  starfish export format=hf                      # hf/: a folder timm or transformers loads without starfish
  starfish report outputs                        # summary.md, summary.csv, plots of every run under outputs/
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(stages="\n".join(f"  {name:<7}{stage.help}" for name, stage in STAGES.items())))
        return 0 if argv else 2
    if argv[0] in ("--version", "-V"):
        from starfish_cli import __version__

        print(f"starfish {__version__}")
        return 0
    try:
        return run(argv[0], argv[1:])
    except StarfishError as error:
        print(f"starfish: error: {error}", file=sys.stderr)
    except (HydraException, OmegaConfBaseException) as error:  # a config problem the checks missed
        print(f"starfish: error: {' '.join(str(error).split())[:300]}", file=sys.stderr)
    except OSError as error:  # the file system said no: a folder that cannot be made, a full disk
        print(f"starfish: error: {error.strerror or error} ({error.filename or 'output folder'}): "
              "choose a writable output_root or hydra.run.dir", file=sys.stderr)
    return 2


def run(stage: str, arguments: list[str]) -> int:
    """Check the stage's arguments, then hand them to its Hydra app; the exit code."""
    if stage not in STAGES:
        raise StarfishError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)} (starfish --help)")
    front = argparse.ArgumentParser(add_help=False)
    front.add_argument("--config")
    known, remaining = front.parse_known_args(arguments)
    # an experiment file is copied into a temporary config folder; without one none is made (a killed run leaves nothing)
    temporary = tempfile.TemporaryDirectory(prefix="starfish-config-") if known.config else contextlib.nullcontext()
    with temporary as workdir:
        flags, overrides = hydra_arguments(stage, known.config, remaining, Path(workdir) if workdir else None)
        sys.argv = [f"starfish {stage}", *flags, *overrides]
        # Hydra re-raises what fails in it (a run folder it cannot create) instead of printing a
        # stack trace and exiting 1: `main` turns it into one line
        os.environ["HYDRA_FULL_ERROR"] = "1"
        return launch(stage)


def hydra_arguments(stage: str, config: str | None, arguments: list[str],
                    workdir: Path | None) -> tuple[list[str], list[str]]:
    """Hydra's flags and overrides for `starfish <stage> …`, checked: one line for anything wrong."""
    flags, overrides = split_flags(arguments)
    if UNSUPPORTED_FLAGS & set(flags):
        raise StarfishError("starfish offers no shell completion (Hydra's completes a single app, not "
                            "`starfish <stage>`): `starfish run --cfg job` lists every key")
    if any(flag in ("-v", "--verbose") for flag in flags):  # library logging back on the console
        flags = [flag for flag in flags if flag not in ("-v", "--verbose")]
        overrides.append("hydra.verbose=true")
    if stage == "report":
        overrides = report_overrides(overrides)
    if config:
        extra_flags, extra_overrides = experiment_arguments(config, workdir)
        flags, overrides = extra_flags + flags, extra_overrides + overrides
    overrides = open_node_overrides(overrides)
    if stage == "export":
        overrides = export_shorthand(overrides)
    extra_dirs = [Path(flags[i + 1]) for i, f in enumerate(flags[:-1]) if f in ("--config-dir", "-cd")]
    check_group_choices(overrides, extra_dirs)
    if STAGES[stage].steps:
        check_overrides(STAGES[stage].config_name, overrides, extra_dirs, partial(check_config, steps=STAGES[stage].steps))
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 writes the run folder
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return flags, overrides


if __name__ == "__main__":
    sys.exit(main())
