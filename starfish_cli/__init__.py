"""starfish: prune pretrained vision transformers, then heal them by internal-state alignment."""

__version__ = "0.1.0"

# Importing the package registers the embedded reference model with timm.
from starfish_cli import reference_model as _reference_model  # noqa: F401,E402
