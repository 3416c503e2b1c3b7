"""Copy a sweep's summary table and plots into the README's Results section (between its markers).

    python scripts/update_readme_results.py outputs/compare/default
"""

import shutil
import sys
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def main(sweep: Path, readme: Path = Path("README.md"), figures: Path = Path("docs")) -> None:
    figures.mkdir(exist_ok=True)
    images = []
    for name in ("accuracy_vs_sparsity.png", "recovery_vs_time.png"):
        if (sweep / name).is_file():
            shutil.copyfile(sweep / name, figures / name)
            images.append(f"![{name[:-4].replace('_', ' ')}]({figures / name})")
    block = "\n".join([START, "", (sweep / "summary.md").read_text().strip(), "", *images, "", END])
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"{readme} has no {START} … {END} markers")
    before, rest = text.split(START, 1)
    readme.write_text(before + block + rest.split(END, 1)[1])
    print(f"updated {readme} from {sweep}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
