"""The dataset registry: `data.name` in a config picks a source registered here (images or text)."""

from starfish_cli.registry import Registry

DATASETS = Registry("data")
