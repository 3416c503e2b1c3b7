"""Stage commands: one @hydra.main each; they wire config to library calls and nothing more."""

from starfish_cli.stages.resolvers import register as _register_resolvers

_register_resolvers()  # before Hydra composes: the run-folder path uses them

STAGES = ("prune", "heal", "eval", "run")
