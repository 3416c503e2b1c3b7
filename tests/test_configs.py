"""Every shipped config composes, and every group option builds its object (unknown keys would fail)."""

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from starfish_cli.data.calibration import CalibrationSampler
from starfish_cli.cli.arguments import group_options, package_config_dir
from starfish_cli.data import DATASETS
from starfish_cli.healing import HEALERS
from starfish_cli.models import build_model
from starfish_cli.pruning import PRUNERS
from starfish_cli.registry import check_arguments
from starfish_cli.stages import STAGES

GROUPS = ("model", "data", "calib", "pruner", "healer", "experiment")


def compose_config(stage, overrides=()):
    with initialize_config_module(config_module="starfish_cli.configs", version_base="1.3"):
        return compose(config_name=stage, overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("stage", [name for name, stage in STAGES.items() if stage.steps])
def test_primary_configs_compose(stage):
    cfg = compose_config(STAGES[stage].config_name)
    assert cfg.model.name == "vit_fmnist" and cfg.pruner.name == "wanda" and cfg.healer.name == "starfish"


def test_every_group_has_options():
    for group in GROUPS:
        assert group_options(group, []), group


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g, [])])
def test_every_option_builds(group, option):
    overrides = [f"{group}={option}"] + (["data.path=/tmp"] if (group, option) == ("data", "imagefolder") else [])
    cfg = compose_config("starfish", overrides)
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra")
    assert "???" not in str(container) or group == "data"
    PRUNERS.build(OmegaConf.to_container(cfg.pruner))
    HEALERS.build(OmegaConf.to_container(cfg.healer, resolve=True))
    check_arguments(CalibrationSampler, OmegaConf.to_container(cfg.calib), "calib", "calib")
    CalibrationSampler(**OmegaConf.to_container(cfg.calib))
    if cfg.data.name != "imagefolder":
        DATASETS.build(OmegaConf.to_container(cfg.data))
    if cfg.model.name == "vit_fmnist" or not cfg.model.pretrained:
        build_model(OmegaConf.to_container(cfg.model))


def test_experiment_files_are_global_packages():
    for path in (package_config_dir() / "experiment").glob("*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path.name


def test_the_longer_smollm2_recipe_is_the_default_run_on_twice_the_calibration():
    """What docs/results.md measured as `model=smollm2_135m pruner.sparsity=0.5 calib.count=256` (the folder aside)."""
    def settings(overrides):
        cfg = OmegaConf.to_container(compose_config("starfish", overrides), resolve=False)
        cfg.pop("hydra")
        return cfg

    long = settings(["experiment=smollm2_wanda_50_long"])
    assert long == settings(["model=smollm2_135m", "pruner=wanda", "pruner.sparsity=0.5", "calib.count=256"])
    assert long["calib"]["count"] == 2 * settings(["model=smollm2_135m"])["calib"]["count"]


@pytest.mark.parametrize("group,registry", [("pruner", PRUNERS), ("healer", HEALERS)])
def test_yaml_keys_are_the_constructor_arguments(group, registry):
    """Every option of a pruner or healer is visible (and overridable) in its YAML; `seed` comes from the run."""
    import inspect

    for option in group_options(group, []):
        cfg = OmegaConf.to_container(compose_config("starfish", [f"{group}={option}"])[group])
        arguments = set(inspect.signature(registry.get(cfg.pop("name"))).parameters) - {"seed"}
        assert set(cfg) == arguments, (option, set(cfg) ^ arguments)


@pytest.mark.parametrize("overrides, message", [
    (["eval.num_workers=-1"], "eval.num_workers=-1"),
    (["calib.fraction=2"], "calib.fraction=2 must be a number in (0, 1]"),
    (["eval.batch_size=0"], "eval.batch_size=0 must be a whole number ≥ 1"),
    (["eval.seq_len=64"], "eval.seq_len=64 is for language models, and this is a vision model"),
    (["eval.tasks=[boolq]"], "eval.tasks=['boolq'] is for language models"),
    (["seed=abc"], "seed='abc' must be a whole number"),
    (["model.pretrained=maybe"], "model.pretrained='maybe' must be true or false"),
    (["onload=sometimes"], "onload='sometimes': choose one of auto, true, false"),
    (["onload_states=ram"], "onload_states='ram': choose one of auto, host, disk"),
    (["pruner.sparsity=2"], "outside [0, 1)"),
    (["pruner.pattern=2-4"], "malformed pruner.pattern '2-4'"),
    (["calib.count=0"], "calib.count=0 must be a whole number ≥ 1"),
    (["healer.reshuffle=sometimes"], "healer.reshuffle='sometimes' must be true or false"),
    (["pruner=sparsegpt", "pruner.block_size=0"], "pruner.block_size=0 must be a whole number ≥ 1"),
    (["healer.teacher=nowhere"], "healer.teacher='nowhere': choose one of auto, gpu, host, recompute"),
])
def test_settings_a_run_cannot_take_are_one_line_before_anything_loads(overrides, message):
    """What the CLI checks from the config alone, before the first run of a sweep starts (the CLI tests run a
    case of each kind through the installed `starfish`: exit 2, one line, nothing written)."""
    from starfish_cli.runtime.errors import StarfishError
    from starfish_cli.stages.settings import check_config

    with pytest.raises(StarfishError) as refused:
        check_config(compose_config("starfish", overrides), ("prune", "heal", "eval"))
    assert message in str(refused.value) and "\n" not in str(refused.value)
