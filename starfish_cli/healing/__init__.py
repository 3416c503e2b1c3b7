"""Healers: one file each, registered by name in `HEALERS`."""

from starfish_cli.healing import kd, none, norm, starfish, supervised  # noqa: F401  (register the healers)
from starfish_cli.healing.base import Healer, HealResult
from starfish_cli.healing.registry import HEALERS

__all__ = ["HEALERS", "Healer", "HealResult"]
