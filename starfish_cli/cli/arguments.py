"""From the command line to Hydra's argv: flags apart from overrides, shorthands expanded, an experiment
file made visible to Hydra's search path."""

import re
from importlib import resources
from pathlib import Path

from starfish_cli.runtime.errors import StarfishError

# Hydra flags that take a value; --info takes one only if it is one of its topics
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun"}
# Hydra's shell completion completes one app called with its own argv: it cannot see `starfish <stage>`
# (it installs a completion for a command named after the stage, whose queries then fail)
UNSUPPORTED_FLAGS = {"--shell-completion", "-sc"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
# config nodes whose keys are the user's (timm.create_model kwargs, preprocessing): `model.kwargs.depth=2` adds a key
_OPEN_NODES = re.compile(r"^(model\.kwargs|model\.data_config)(\.[^=]*)?=")
_EXPORT_SHORTHAND = re.compile(r"^(format|dtype|push_to_hub)=")  # `starfish export format=onnx`: keys of the export node


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
    """`format=…`, `dtype=…` and `push_to_hub=…` after `starfish export` are `export.format=…` and so on."""
    return [f"export.{o}" if _EXPORT_SHORTHAND.match(o) else o for o in overrides]


def group_options(group: str, extra_dirs: list[Path]) -> list[str]:
    names = set()
    for root in [package_config_dir(), *extra_dirs]:
        names.update(p.stem for p in (root / group).glob("*.yaml"))
    return sorted(names)


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


def hydra_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def report_overrides(overrides: list[str]) -> list[str]:
    """`starfish report DIR`: the folder, a positional argument, becomes `dir=DIR` (checked before Hydra,
    which would make it as its run folder)."""
    folders = [o for o in overrides if "=" not in o]
    if len(folders) != 1:
        raise StarfishError("usage: starfish report DIR (the folder of a sweep, e.g. outputs)")
    if not Path(folders[0]).is_dir():
        raise StarfishError(f"{folders[0]} is not a folder: give the folder of a sweep, e.g. starfish report outputs")
    return [f"dir={hydra_quote(folders[0])}"] + [o for o in overrides if "=" in o]
