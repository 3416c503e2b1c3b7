"""The pruner registry: `pruner.name` in a config picks a class registered here."""

from starfish_cli.registry import Registry

PRUNERS = Registry("pruner")
