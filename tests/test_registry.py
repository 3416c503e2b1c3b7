"""Registries build components from config nodes and label them by their non-default options."""

import pytest

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.healing import HEALERS
from starfish_cli.pruning import PRUNERS


def test_label_names_non_default_options():
    assert HEALERS.label({"name": "starfish", "epochs": 10, "lr": 6e-4, "seed": 3}) == "starfish"
    assert HEALERS.label({"name": "starfish", "epochs": 30, "seed": 0}) == "starfish[epochs=30]"
    assert HEALERS.label({"name": "kd", "temperature": 2.0}) == "kd[temperature=2.0]"
    assert HEALERS.label(HEALERS.build({"name": "starfish", "states": ["blocks"]}).describe()) == "starfish"
    columns = ("name", "sparsity", "pattern")
    assert PRUNERS.label({"name": "wanda", "sparsity": 0.9, "pattern": "2:4", "comparison": "row"}, columns) == "wanda"
    assert PRUNERS.label({"name": "wanda", "sparsity": 0.9, "comparison": "layer"}, columns) \
        == "wanda[comparison=layer]"


def test_unknown_keys_and_names_are_one_line_errors():
    with pytest.raises(StarfishError, match="has no option 'epoch'"):
        HEALERS.build({"name": "starfish", "epoch": 3})
    with pytest.raises(StarfishError, match="unknown pruner 'wandaa'"):
        PRUNERS.build({"name": "wandaa"})
