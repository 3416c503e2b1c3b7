"""Copy a sweep's summary table and plots into a README section between its markers: `results`
(the vision comparison, scripts/compare_healers.sh), `lm` (scripts/compare_lm.sh) or `extreme`
(scripts/extreme_sparsity.sh); the figures of a section other than `results` get its name as a prefix.

    python scripts/update_readme_results.py outputs/compare/default
    python scripts/update_readme_results.py outputs/lm/default lm
    python scripts/update_readme_results.py outputs/extreme extreme
"""

import shutil
import sys
from pathlib import Path

FIGURES = ("accuracy_vs_sparsity.png", "recovery_vs_time.png", "recovery_vs_heal_time.png")


def main(sweep: Path, section: str = "results", readme: Path = Path("README.md"), figures: Path = Path("docs")) -> None:
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    prefix = "" if section == "results" else f"{section}_"
    figures.mkdir(exist_ok=True)
    images = []
    for name in FIGURES:
        if (sweep / name).is_file():
            shutil.copyfile(sweep / name, figures / f"{prefix}{name}")
            images.append(f"![{name[:-4].replace('_', ' ')}]({figures / f'{prefix}{name}'})")
    block = "\n".join([start, "", (sweep / "summary.md").read_text().strip(), "", *images, "", end])
    text = readme.read_text()
    if start not in text or end not in text:
        sys.exit(f"{readme} has no {start} … {end} markers")
    before, rest = text.split(start, 1)
    readme.write_text(before + block + rest.split(end, 1)[1])
    print(f"updated {readme} from {sweep}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
