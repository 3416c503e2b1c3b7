"""The embedded reference model: a small timm ViT for Fashion-MNIST, registered as `vit_fmnist`.

Importing this module makes `timm.create_model("vit_fmnist", pretrained=True)` load the
shipped weights from `assets/` with no network access.
"""

from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN  # noqa: F401  (kept so timm.data is initialised first)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

ASSET_PATH = Path(__file__).resolve().parent.parent / "assets" / "vit_fmnist.safetensors"

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

# Architecture of the reference network: 7×7 grid of 4×4 patches + class token = 50 tokens.
VIT_FMNIST_ARGS = dict(
    img_size=28,
    patch_size=4,
    in_chans=1,
    num_classes=10,
    embed_dim=128,
    depth=6,
    num_heads=4,
    mlp_ratio=4.0,
)

# A Python without starfish has no `vit_fmnist`: the same network is timm's own VisionTransformer
# built through a built-in name with these arguments (the built-in's own size arguments all overridden),
# which is what `starfish export format=hf` writes as the architecture.
PLAIN_TIMM = {"vit_fmnist": ("vit_base_patch16_224", VIT_FMNIST_ARGS)}

default_cfgs = generate_default_cfgs({
    "vit_fmnist.starfish": {
        "file": str(ASSET_PATH),
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,
        "mean": FASHION_MNIST_MEAN,
        "std": FASHION_MNIST_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
    },
})


@register_model
def vit_fmnist(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT (patch 4, width 128, depth 6, 4 heads) for 28×28 greyscale Fashion-MNIST."""
    model_args = {**VIT_FMNIST_ARGS, **kwargs}
    return build_model_with_cfg(
        VisionTransformer,
        "vit_fmnist",
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **model_args,
    )
