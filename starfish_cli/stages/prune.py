"""`starfish prune`: Prune the model and save pruned.safetensors in the run folder."""

import hydra
from omegaconf import DictConfig

from starfish_cli.stages.common import run_stage


@hydra.main(version_base="1.3", config_path="pkg://starfish_cli.configs", config_name="prune")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, steps=("prune",))


if __name__ == "__main__":
    main()
