import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import needs_fmnist, read_json, run_in_process
from starfish_cli.healing import HEALERS
from starfish_cli.healing.recipes import RECIPES, recipe_for
from starfish_cli.healing.starfish import StarfishHealer


def healer_node(*overrides: str) -> dict:
    with initialize_config_module(config_module="starfish_cli.configs", version_base="1.3"):
        cfg = compose(config_name="starfish", overrides=list(overrides))
    return OmegaConf.to_container(cfg.healer, resolve=True)


@pytest.mark.parametrize("pruner,modality,expected", [
    ({"name": "wanda", "sparsity": 0.5, "pattern": "unstructured"}, "images", "reference"),
    ({"name": "wanda", "sparsity": 0.75, "pattern": "unstructured"}, "images", "high"),
    ({"name": "wanda", "sparsity": {"blocks.0.*": 0.95}, "pattern": "unstructured"}, "images", "reference"),
    ({"name": "magnitude", "sparsity": 0.9, "pattern": "unstructured"}, "images", "extreme"),
    ({"name": "sparsegpt", "sparsity": 0.98, "pattern": "unstructured"}, "images", "extreme"),
    ({"name": "wanda", "sparsity": 0.95, "pattern": "2:4"}, "images", "reference"),  # N:M fixes the sparsity at 1/2
    ({"name": "structured", "heads": 0.25, "mlp": 0.25}, "images", "structured"),
    ({"name": "wanda", "sparsity": 0.95, "pattern": "unstructured"}, "text", "lm"),  # language models: block-wise
    ({"name": "wanda", "sparsity": 0.5, "pattern": "2:4"}, "text", "lm"),
])
def test_the_recipe_follows_the_pattern(pruner, modality, expected):
    assert recipe_for(pruner, modality) == expected


def test_unset_settings_come_from_the_recipe_and_set_ones_stay():
    healer = StarfishHealer(recipe="extreme", epochs=7)
    assert (healer.epochs, healer.batch_size, healer.lr) == (7, RECIPES["extreme"].batch_size, RECIPES["extreme"].lr)
    plain = StarfishHealer()
    assert (plain.epochs, plain.batch_size, plain.lr) == (10, 32, 6e-4)  # the reference recipe, as before recipes


@pytest.mark.parametrize("options,picked,label", [
    ({}, "reference", "starfish"),
    ({"epochs": 30}, "reference", "starfish[epochs=30]"),
    ({"recipe": "extreme"}, "extreme", "starfish"),  # what the pruner calls for is the default: no option to show
    ({"recipe": "extreme", "epochs": 7}, "extreme", "starfish[epochs=7]"),
    ({"recipe": "reference"}, "high", "starfish[recipe=reference]"),
    ({"recipe": "reference", "epochs": 30}, "high", "starfish[epochs=30,recipe=reference]"),
    ({"recipe": "structured", "lr": 6e-4}, "reference", "starfish[lr=0.0006,recipe=structured]"),
])
def test_a_label_names_a_recipe_other_than_the_pruners_and_what_differs_from_it(options, picked, label):
    assert HEALERS.label(StarfishHealer(**options).describe(), run_defaults={"recipe": picked}) == label
    assert HEALERS.label(StarfishHealer(**options).describe()) == HEALERS.label(
        StarfishHealer(**options).describe(), run_defaults={"recipe": "reference"})  # without a run: the class's


@pytest.mark.parametrize("overrides,recipe", [
    ([], "high"),  # the demo's Wanda 75%
    (["pruner.sparsity=0.5"], "reference"),
    (["pruner=magnitude", "pruner.sparsity=0.9"], "extreme"),
    (["pruner=structured"], "structured"),
    (["pruner.pattern=2:4"], "reference"),
    (["model=lm_reference", "pruner.sparsity=0.95"], "lm"),
    (["model=lm_reference", "healer.recipe=reference"], "reference"),
    (["model=lm_reference", "healer.recipe=lm_end_to_end"], "lm_end_to_end"),  # a language model end to end
    (["pruner=structured", "healer.recipe=reference"], "reference"),  # named, it wins
    (["experiment=extreme_90", "pruner.sparsity=0.5"], "extreme"),    # so does an experiment's
])
def test_the_config_picks_the_recipe_from_the_pruner(overrides, recipe):
    node = healer_node(*overrides)
    assert node["recipe"] == recipe
    assert all(node[key] is None for key in vars(RECIPES[recipe]))  # the config names the recipe; the healer fills in
    healer = HEALERS.build(node)
    assert {key: getattr(healer, key) for key in vars(RECIPES[recipe])} == vars(RECIPES[recipe])


def test_a_set_value_overrides_only_itself():
    healer = HEALERS.build(healer_node("pruner.sparsity=0.95", "healer.lr=1e-3"))
    assert (healer.recipe, healer.epochs, healer.batch_size, healer.lr) == ("extreme", 20, 8, 1e-3)


@needs_fmnist
@pytest.mark.slow
def test_a_sweep_over_sparsity_heals_each_run_with_its_recipe_under_one_label(tmp_path):
    run_in_process("run", "-m", "pruner.sparsity=0.5,0.9", "calib.count=16", "healer.epochs=1", "eval.max_images=64",
                   "eval.batch_size=64", "eval.speed=false", cwd=tmp_path)
    reports = {read_json(path)["pruner"]["sparsity"]: read_json(path) for path in (tmp_path / "outputs").rglob("report.json")}
    assert {s: (r["healer"]["recipe"], r["healer"]["batch_size"], r["healing"]["steps"]) for s, r in reports.items()} \
        == {0.5: ("reference", 32, 1), 0.9: ("extreme", 8, 2)}
    assert {r["labels"]["healer"] for r in reports.values()} == {"starfish[epochs=1]"}  # one column, one curve
