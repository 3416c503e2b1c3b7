"""The embedded English corpus: Debian's `fortunes` files, one document per fortune, split by fortune."""

import random
import re
from pathlib import Path

SYSTEM_DIR = Path("/usr/share/games/fortunes")  # Debian package fortunes
SKIPPED_FILES = {"ascii-art"}  # pictures, not prose
SPLIT_FRACTIONS = {"train": 0.9, "validation": 0.05, "test": 0.05}
SPLIT_SEED = 0
_OVERSTRIKE = re.compile(".\b")  # `_\bX` (underline) and `X\bX` (bold) of old terminals


def read_fortunes(directory: Path = SYSTEM_DIR) -> list[str]:
    """Every fortune of every fortune file in `directory` (sorted by file name, in file order),
    with the `%` separator lines dropped, overstriking removed and surrounding blank space stripped."""
    directory = Path(directory)
    files = sorted(path for path in directory.iterdir()
                   if path.is_file() and not path.is_symlink() and not path.suffix and path.name not in SKIPPED_FILES)
    if not files:
        raise FileNotFoundError(f"no fortune files in {directory}")
    fortunes = []
    for path in files:
        text = _OVERSTRIKE.sub("", path.read_text(encoding="utf-8", errors="replace"))
        fortunes += [entry.strip() for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE) if entry.strip()]
    return fortunes


def split_fortunes(fortunes: list[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """A fixed seeded split by fortune: 90% train, 5% validation, 5% test, each in shuffled order."""
    order = list(range(len(fortunes)))
    random.Random(seed).shuffle(order)
    splits, start = {}, 0
    for index, (name, fraction) in enumerate(SPLIT_FRACTIONS.items()):
        end = len(order) if index == len(SPLIT_FRACTIONS) - 1 else start + round(fraction * len(order))
        splits[name] = [fortunes[i] for i in order[start:end]]
        start = end
    return splits
