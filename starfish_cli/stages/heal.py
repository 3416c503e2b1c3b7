"""`starfish heal`: Heal the pruned checkpoint of this run (or pruned=PATH) and save healed.safetensors."""

import hydra
from omegaconf import DictConfig

from starfish_cli.stages.common import run_stage


@hydra.main(version_base="1.3", config_path="pkg://starfish_cli.configs", config_name="heal")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, steps=("heal",))


if __name__ == "__main__":
    main()
