"""Overrides checked before Hydra starts: every group choice exists, every key is one the config has,
and every value (each of a sweep's, one at a time) passes the stage's own checks — each problem one line."""

import re
from pathlib import Path

from starfish_cli.cli.arguments import group_options
from starfish_cli.runtime.errors import StarfishError, first_line

CONFIG_GROUPS = ("model", "data", "calib", "pruner", "healer", "logger", "experiment")
_GROUP_OVERRIDE = re.compile(rf"^[+]{{0,2}}({'|'.join(CONFIG_GROUPS)})=(.*)$")


def check_group_choices(overrides: list[str], extra_dirs: list[Path]) -> None:
    """An unknown `pruner=…`, `healer=…`, `model=…` choice is a one-line error before Hydra starts; so is
    one in a plain list of choices (`logger=[csv,tensorboard]`)."""
    for override in overrides:
        match = _GROUP_OVERRIDE.match(override)
        if not match:
            continue
        group, values = match.groups()
        if re.fullmatch(r"\[[^()\[\]{}$]*\]", values):
            values = values[1:-1]  # several options of one group at once
        elif re.search(r"[()\[\]{}$]", values):
            continue  # sweep functions and interpolations are Hydra's business
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


def check_overrides(config_name: str, overrides: list[str], extra_dirs: list[Path], check_values=None) -> None:
    """Every override parses and names a key the config has, so that Hydra's multi-line errors become one
    line with a close key named; `check_values(cfg)` then checks the values. A sweep's values are tried one
    at a time (the other keys at their first value), so that a bad one fails before the first run starts."""
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
    for number, override in enumerate(checked):  # every value of every swept key, the others at their first
        if override.is_sweep_override():
            for value in list(override.sweep_string_iterator())[1:]:
                variants.append(base[:number] + [_as_single(override, value)] + base[number + 1:])
    searchpath = [f"hydra.searchpath=[{','.join('file://' + str(d.resolve()) for d in extra_dirs)}]"] if extra_dirs else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="starfish_cli.configs", version_base="1.3"):
            for variant in variants:
                try:
                    cfg = compose(config_name=config_name, overrides=variant + searchpath)
                except (HydraException, OmegaConfBaseException) as error:
                    raise StarfishError(_override_problem(error, variant, config_name, searchpath, compose)) from error
                if check_values is not None:  # what the stage checks first, for every run of a sweep before any starts
                    check_values(cfg)
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
