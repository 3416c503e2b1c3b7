"""The Python API for a model in hand (a notebook's): `prune`, `heal` and `evaluate` on a torch module and
plain data, the same work the CLI's stages run on the model and data they load."""

from starfish_cli.api.items import TensorItems
from starfish_cli.api.steps import Healing, Pruning, evaluate, heal, prune

__all__ = ["Healing", "Pruning", "TensorItems", "evaluate", "heal", "prune"]
