"""`starfish report DIR`: aggregate every finished run under DIR into summary.md/.csv and plots."""

import sys
from pathlib import Path

from omegaconf import DictConfig

from starfish_cli.reporting.summary import write_summary
from starfish_cli.runtime.errors import StarfishError


def report_folder(cfg: DictConfig) -> str | None:
    """The body of `starfish report`'s @hydra.main: the summary files, or the one-line problem."""
    try:
        root = Path(cfg.dir)
        if not root.is_dir():
            raise StarfishError(f"{root} is not a folder: give the folder of a sweep, e.g. starfish report outputs")
        for path in write_summary(root).values():
            print(f"wrote {path}")
    except StarfishError as error:
        print(f"starfish: error: {error}", file=sys.stderr)
        return str(error)
    return None
