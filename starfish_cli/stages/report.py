"""`starfish report DIR`: aggregate every finished run under DIR into summary.md/.csv and plots."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.reporting.summary import write_summary


@hydra.main(version_base="1.3", config_path="pkg://starfish_cli.configs", config_name="report")
def main(cfg: DictConfig) -> None:
    try:
        root = Path(cfg.dir)
        if not root.is_dir():
            raise StarfishError(f"{root} is not a folder: give the folder of a sweep, e.g. starfish report outputs")
        for name, path in write_summary(root).items():
            print(f"wrote {path}")
    except StarfishError as error:
        print(f"starfish: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
