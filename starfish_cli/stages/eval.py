"""`starfish eval`: Evaluate dense, pruned and healed models on the evaluation split and write the report."""

import hydra
from omegaconf import DictConfig

from starfish_cli.stages.common import run_stage


@hydra.main(version_base="1.3", config_path="pkg://starfish_cli.configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, steps=("eval",))


if __name__ == "__main__":
    main()
