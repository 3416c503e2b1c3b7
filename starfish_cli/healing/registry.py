"""The healer registry: `healer.name` in a config picks a class registered here."""

from starfish_cli.registry import Registry

HEALERS = Registry("healer")
