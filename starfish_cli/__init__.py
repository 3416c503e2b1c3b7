"""starfish: prune pretrained transformers (timm vision transformers, transformers causal LMs), then heal
them by aligning their internal states with the dense model's (STARFISH)."""

__version__ = "0.2.0"


_API = ("prune", "heal", "evaluate")  # starfish_cli.api's functions: a model in hand, plain data (docs/api.md)


def __getattr__(name: str):
    """`starfish_cli.load`, `.prune`, `.heal` and `.evaluate` are imported on first use: `import starfish_cli`
    (and `starfish --help`) loads no torch."""
    if name == "load":
        from starfish_cli.artifacts.load import load

        return load
    if name in _API:
        from starfish_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'starfish_cli' has no attribute {name!r}")
