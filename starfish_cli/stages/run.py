"""`starfish run`: Prune, heal and evaluate in one process."""

import hydra
from omegaconf import DictConfig

from starfish_cli.stages.common import run_stage


@hydra.main(version_base="1.3", config_path="pkg://starfish_cli.configs", config_name="run")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, steps=("prune", "heal", "eval"))


if __name__ == "__main__":
    main()
