"""The `starfish` front end: `starfish <stage> [--config FILE] [hydra flags] [key=value ...]`.

Hydra 1.3 has no subcommands, so this rewrites argv (flags first, overrides last) and
calls the stage's own @hydra.main; `-m`, `--cfg job`, `--info` and run folders keep working.
"""

import argparse
import os
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from starfish_cli.runtime.errors import StarfishError, first_line
from starfish_cli.stages import STAGES as PIPELINE_STAGES
from starfish_cli.stages import launch

STAGES = {name: stage.help for name, stage in PIPELINE_STAGES.items()} | {
    "report": "aggregate every run under DIR: summary.md, summary.csv, plots (starfish report DIR)",
}
CONFIG_GROUPS = ("model", "data", "calib", "pruner", "healer", "experiment")
# Hydra flags that take a value; --info takes one only if it is one of its topics
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
# config nodes whose keys are the user's (timm.create_model kwargs, preprocessing): `model.kwargs.depth=2` adds a key
_OPEN_NODES = re.compile(r"^(model\.kwargs|model\.data_config)(\.[^=]*)?=")
_EXPORT_SHORTHAND = re.compile(r"^(format|dtype)=")  # `starfish export format=onnx`: keys of the export node
_GROUP_OVERRIDE = re.compile(rf"^[+]{{0,2}}({'|'.join(CONFIG_GROUPS)})=(.*)$")

USAGE = """usage: starfish <stage> [--config FILE] [-m] [-v] [hydra flags] [key=value ...]

stages:
{stages}

examples:
  starfish run                                   # embedded ViT, Wanda 75%, STARFISH healing
  starfish run pruner=magnitude pruner.sparsity=0.9
  starfish prune -m pruner.sparsity=0.5,0.75     # a sweep; then heal -m / eval -m with the same values
  starfish run --config configs/experiment/fmnist_wanda_75.yaml
  starfish run --cfg job                         # print the composed config
  starfish report outputs                        # summary.md, summary.csv, plots of every run under outputs/
"""


def package_config_dir() -> Path:
    return Path(str(resources.files("starfish_cli") / "configs"))


def split_flags(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra flags (with their values) from key=value overrides, keeping order within each."""
    flags, overrides, i = [], [], 0
    while i < len(arguments):
        token = arguments[i]
        if token.startswith("-") and "=" not in token.split("-", 2)[-1][:1]:
            flags.append(token)
            takes_value = token in _VALUE_FLAGS or (
                token in {"--info", "-i"} and i + 1 < len(arguments) and arguments[i + 1] in _INFO_TOPICS)
            if takes_value and i + 1 < len(arguments):
                flags.append(arguments[i + 1])
                i += 1
        else:
            overrides.append(token)
        i += 1
    return flags, overrides


def open_node_overrides(overrides: list[str]) -> list[str]:
    """`model.kwargs=…` and `model.kwargs.KEY=…` as written: Hydra would need `+`/`++` for new keys."""
    return [f"++{o}" if _OPEN_NODES.match(o) else o for o in overrides]


def export_shorthand(overrides: list[str]) -> list[str]:
    """`format=…` and `dtype=…` after `starfish export` are `export.format=…` and `export.dtype=…`."""
    return [f"export.{o}" if _EXPORT_SHORTHAND.match(o) else o for o in overrides]


def group_options(group: str, extra_dirs: list[Path]) -> list[str]:
    names = set()
    for root in [package_config_dir(), *extra_dirs]:
        names.update(p.stem for p in (root / group).glob("*.yaml"))
    return sorted(names)


def check_group_choices(overrides: list[str], extra_dirs: list[Path]) -> None:
    """An unknown `pruner=…`, `healer=…`, `model=…` choice is a one-line error before Hydra starts."""
    for override in overrides:
        match = _GROUP_OVERRIDE.match(override)
        if not match or re.search(r"[()\[\]{}$]", match.group(2)):
            continue  # sweep functions and interpolations are Hydra's business
        group, values = match.groups()
        options = group_options(group, extra_dirs)
        for value in values.split(","):
            if value.strip() and value.strip() not in options and value.strip() != "null":
                hint = " (or set model.name=<any timm model>)" if group == "model" else ""
                raise StarfishError(f"unknown {group} {value.strip()!r}: choose one of {', '.join(options)}{hint}")


def _as_single(override, value: str) -> str:
    prefix = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}.get(override.type.name, "")
    return f"{prefix}{override.key_or_group}={value}"


def _flat_keys(node, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for key in node.keys() if isinstance(node, DictConfig) else ():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys += _flat_keys(child, f"{dotted}.")
    return keys


def check_overrides(config_name: str, overrides: list[str], extra_dirs: list[Path]) -> None:
    """Every override parses and names a key the config has (a sweep's values are tried one group
    choice at a time), so that Hydra's multi-line errors become one line, with a close key named."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise StarfishError(f"cannot read the overrides ({first_line(error)}): write key=value, "
                            "quote values with spaces or commas, e.g. 'dist_backend=\"cpu:gloo,cuda:nccl\"'") from error
    checked = [o for o in parsed if not o.key_or_group.startswith(("hydra.", "hydra/")) and o.key_or_group != "hydra"]
    first = {id(o): next(o.sweep_string_iterator()) if o.is_sweep_override() else None for o in checked}
    base = [o.input_line if first[id(o)] is None else _as_single(o, first[id(o)]) for o in checked]
    variants = [base]
    for number, override in enumerate(checked):  # every choice of a swept group
        if override.is_sweep_override() and override.key_or_group in CONFIG_GROUPS:
            for value in list(override.sweep_string_iterator())[1:]:
                variants.append(base[:number] + [_as_single(override, value)] + base[number + 1:])
    searchpath = [f"hydra.searchpath=[{','.join('file://' + str(d.resolve()) for d in extra_dirs)}]"] if extra_dirs else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="starfish_cli.configs", version_base="1.3"):
            for variant in variants:
                try:
                    compose(config_name=config_name, overrides=variant + searchpath)
                except (HydraException, OmegaConfBaseException) as error:
                    raise StarfishError(_override_problem(error, variant, config_name, searchpath, compose)) from error
    finally:
        GlobalHydra.instance().clear()


def _override_problem(error, variant: list[str], config_name: str, searchpath: list[str], compose) -> str:
    import difflib

    text = " ".join(str(error).split())
    match = re.search(r"Could not (?:override|append to config) '([^']+)'", text) or re.search(r"Key '([^']+)'", text)
    if match and ("not in struct" in text or "Could not override" in text):
        key = match.group(1)
        groups = [o for o in variant if _GROUP_OVERRIDE.match(o)]
        try:
            known = _flat_keys(compose(config_name=config_name, overrides=groups + searchpath))
        except Exception:  # the group choices themselves are the problem
            known = []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        hint = f": did you mean {close[0]}?" if close else ": `starfish run --cfg job` lists the keys"
        context = f" (with {' '.join(groups)})" if groups else ""
        return f"unknown key {key!r}{context}{hint}"
    return f"bad override ({text[:200]})"


def experiment_arguments(config: str, workdir: Path) -> tuple[list[str], list[str]]:
    """Hydra flags and overrides that apply the experiment file `config` over the stage's primary config."""
    path = Path(config).expanduser()
    if not path.is_file():
        shipped = package_config_dir() / "experiment" / f"{path.stem}.yaml"
        if path.suffix in ("", ".yaml") and path.parent == Path(".") and shipped.is_file():
            return [], [f"experiment={path.stem}"]
        raise StarfishError(f"--config {config}: no such file; give an experiment YAML "
                            f"(shipped: {', '.join(group_options('experiment', []))})")
    if path.suffix not in (".yaml", ".yml"):
        raise StarfishError(f"--config {config}: not a .yaml file")
    if path.resolve().parent.name == "experiment":
        return ["--config-dir", str(path.resolve().parent.parent)], [f"experiment={path.stem}"]
    # any other folder: expose the file as experiment/<name>.yaml in a private search-path folder
    (workdir / "experiment").mkdir()
    (workdir / "experiment" / f"{path.stem}.yaml").symlink_to(path.resolve())
    return ["--config-dir", str(workdir)], [f"experiment={path.stem}"]


def _hydra_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stages_text = "\n".join(f"  {name:<7}{text}" for name, text in STAGES.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(stages=stages_text))
        return 0 if argv else 2
    if argv[0] in ("--version", "-V"):
        from starfish_cli import __version__

        print(f"starfish {__version__}")
        return 0
    stage, rest = argv[0], argv[1:]
    front = argparse.ArgumentParser(add_help=False)
    front.add_argument("--config")
    known, remaining = front.parse_known_args(rest)
    try:
        if stage not in STAGES:
            raise StarfishError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)} (starfish --help)")
        with tempfile.TemporaryDirectory(prefix="starfish-config-") as workdir:
            flags, overrides = split_flags(remaining)
            if any(flag in ("-v", "--verbose") for flag in flags):  # library logging back on the console
                flags = [flag for flag in flags if flag not in ("-v", "--verbose")]
                overrides.append("hydra.verbose=true")
            if stage == "report":  # `starfish report DIR`: the folder is a positional argument
                folders = [o for o in overrides if "=" not in o]
                if len(folders) != 1:
                    raise StarfishError("usage: starfish report DIR (the folder of a sweep, e.g. outputs)")
                if not Path(folders[0]).is_dir():  # before Hydra, which would make it as its run folder
                    raise StarfishError(f"{folders[0]} is not a folder: give the folder of a sweep, "
                                        "e.g. starfish report outputs")
                overrides = [f"dir={_hydra_quote(folders[0])}"] + [o for o in overrides if "=" in o]
            if known.config:
                extra_flags, extra_overrides = experiment_arguments(known.config, Path(workdir))
                flags, overrides = extra_flags + flags, extra_overrides + overrides
            overrides = open_node_overrides(overrides)
            if stage == "export":
                overrides = export_shorthand(overrides)
            extra_dirs = [Path(flags[i + 1]) for i, f in enumerate(flags[:-1]) if f in ("--config-dir", "-cd")]
            check_group_choices(overrides, extra_dirs)
            if stage in PIPELINE_STAGES:
                check_overrides(PIPELINE_STAGES[stage].config_name, overrides, extra_dirs)
            if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 writes the run folder
                overrides += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
            sys.argv = [f"starfish {stage}", *flags, *overrides]
            # Hydra re-raises what fails in it (a run folder it cannot create) instead of printing a
            # stack trace and exiting 1: this function turns it into one line
            os.environ["HYDRA_FULL_ERROR"] = "1"
            if stage == "report":
                from starfish_cli.stages.report import main as report_main

                report_main()
                return 0
            return launch(stage)
    except StarfishError as error:
        print(f"starfish: error: {error}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as error:  # a config problem the checks above missed
        print(f"starfish: error: {' '.join(str(error).split())[:300]}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system said no: a folder that cannot be made, a full disk
        print(f"starfish: error: {error.strerror or error} ({error.filename or 'output folder'}): "
              "choose a writable output_root or hydra.run.dir", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
