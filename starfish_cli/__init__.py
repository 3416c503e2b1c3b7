"""starfish: prune pretrained vision transformers, then heal them by internal-state alignment."""

__version__ = "0.1.0"

# Importing the package registers the embedded reference model with timm.
from starfish_cli import reference_model as _reference_model  # noqa: F401,E402


def __getattr__(name: str):
    """`starfish_cli.load` is imported on first use: the CLI's startup does not pay for it."""
    if name == "load":
        from starfish_cli.loading import load

        return load
    raise AttributeError(f"module 'starfish_cli' has no attribute {name!r}")
