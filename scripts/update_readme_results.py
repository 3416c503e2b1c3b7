"""Copy a sweep's summary table and plots into docs/results.md between a section's markers: `results`
(the vision comparison, scripts/compare_healers.sh; the README links it), `lm`
(scripts/compare_lm.sh), `lm_medium` (scripts/compare_lm_medium.sh) or `extreme` (scripts/extreme_sparsity.sh),
all in docs/results.md; the figures
of a section other than `results` get its name as a prefix.

    python scripts/update_readme_results.py outputs/compare/default
    python scripts/update_readme_results.py outputs/lm/default lm
    python scripts/update_readme_results.py outputs/lm_medium/default lm_medium
    python scripts/update_readme_results.py outputs/extreme extreme
"""

import shutil
import sys
from pathlib import Path

FIGURES = ("accuracy_vs_sparsity.png", "recovery_vs_time.png", "recovery_vs_heal_time.png")
DOCS = Path("docs")
# the pages a section lives in, and how each links the figures in docs/
PAGES = {"results": [(DOCS / "results.md", "")]}


def main(sweep: Path, section: str = "results") -> None:
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    prefix = "" if section == "results" else f"{section}_"
    DOCS.mkdir(exist_ok=True)
    figures = []
    for name in FIGURES:
        if (sweep / name).is_file():
            shutil.copyfile(sweep / name, DOCS / f"{prefix}{name}")
            figures.append((name[:-4].replace("_", " "), f"{prefix}{name}"))
    table = (sweep / "summary.md").read_text().strip()
    for page, link in PAGES.get(section, [(DOCS / "results.md", "")]):
        text = page.read_text()
        if start not in text or end not in text:
            sys.exit(f"{page} has no {start} … {end} markers")
        images = [f"![{title}]({link}{file})" for title, file in figures]
        block = "\n".join([start, "", table, "", *images, "", end])
        before, rest = text.split(start, 1)
        page.write_text(before + block + rest.split(end, 1)[1])
        print(f"updated {page} from {sweep}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
