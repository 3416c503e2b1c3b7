"""The argv rewriting in front of Hydra: flags first, overrides last; experiment files; group checks."""

import pytest

from starfish_cli.cli.arguments import experiment_arguments, split_flags
from starfish_cli.cli.checks import check_group_choices
from starfish_cli.runtime.errors import StarfishError


def test_flags_move_before_overrides_keeping_their_values():
    flags, overrides = split_flags(["pruner.sparsity=0.5", "-m", "seed=1", "--cfg", "job", "--info", "defaults", "a=b"])
    assert flags == ["-m", "--cfg", "job", "--info", "defaults"]
    assert overrides == ["pruner.sparsity=0.5", "seed=1", "a=b"]


def test_info_without_topic_takes_no_value():
    assert split_flags(["--info", "seed=2"]) == (["--info"], ["seed=2"])


def test_experiment_file_in_an_experiment_folder(tmp_path):
    path = tmp_path / "configs" / "experiment" / "mine.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("# @package _global_\n")
    flags, overrides = experiment_arguments(str(path), tmp_path / "work")
    assert flags == ["--config-dir", str(tmp_path / "configs")] and overrides == ["experiment=mine"]


def test_experiment_file_anywhere_is_linked_into_a_private_folder(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("# @package _global_\n")
    work = tmp_path / "work"
    work.mkdir()
    flags, overrides = experiment_arguments(str(path), work)
    assert flags == ["--config-dir", str(work)] and (work / "experiment" / "mine.yaml").resolve() == path


def test_missing_experiment_file(tmp_path):
    with pytest.raises(StarfishError, match="no such file"):
        experiment_arguments(str(tmp_path / "nope.yaml"), tmp_path)


@pytest.mark.parametrize("override", ["pruner=wanda", "healer=none,kd,starfish", "model=deit_base", "+experiment=fmnist_wanda_75"])
def test_known_group_choices_pass_and_a_typo_of_each_fails(override):
    check_group_choices([override], [])  # raises for an unknown choice
    group = override.lstrip("+").split("=")[0]
    with pytest.raises(StarfishError, match=f"unknown {group} '.*x': choose one of"):
        check_group_choices([f"{override}x"], [])


@pytest.mark.parametrize("override,message", [("pruner=wandaa", "unknown pruner 'wandaa'"),
                                              ("healer=none,kdd", "unknown healer 'kdd'"),
                                              ("data=imagenet", "unknown data 'imagenet'")])
def test_unknown_group_choices_fail(override, message):
    with pytest.raises(StarfishError, match=message):
        check_group_choices([override], [])


def test_model_kwargs_take_new_keys_as_written():
    from starfish_cli.cli.arguments import open_node_overrides

    assert open_node_overrides(["model.kwargs={img_size:28,in_chans:1}", "model.kwargs.depth=2", "+model.kwargs.x=1",
                                "model.name=vit_fmnist", "seed=1"]) == [
        "++model.kwargs={img_size:28,in_chans:1}", "++model.kwargs.depth=2", "+model.kwargs.x=1",
        "model.name=vit_fmnist", "seed=1"]


def test_export_keys_are_short_after_export():
    from starfish_cli.cli.arguments import export_shorthand

    assert export_shorthand(["format=hf", "dtype=bfloat16", "push_to_hub=me/pruned", "pruner.sparsity=0.5"]) == [
        "export.format=hf", "export.dtype=bfloat16", "export.push_to_hub=me/pruned", "pruner.sparsity=0.5"]
