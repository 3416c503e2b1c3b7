"""The Jargon File (Debian package `jargon-text`): its glossary, one document per entry."""

import gzip
import re
import textwrap
from pathlib import Path

SYSTEM_FILE = Path("/usr/share/doc/jargon-text/jargon.txt.gz")  # Debian package jargon-text
_ENTRY_HEAD = re.compile(r"^   :[^\s:][^:]*:", re.MULTILINE)  # "   :baroque: adj."
_APPENDICES = re.compile(r"^\s+Part\W+III\W+Appendices", re.MULTILINE)
_TABLE = re.compile("[│─┌┐└┘├┤┬┴┼]")  # box-drawn tables: layout, not prose


def read_jargon(path: Path = SYSTEM_FILE) -> list[str]:
    """Every glossary entry of the Jargon File (head line and body, dedented), in file order; entries
    with box-drawn tables are left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Jargon File at {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as file:
        text = file.read()
    heads = [match.start() for match in _ENTRY_HEAD.finditer(text)]
    if not heads:
        raise FileNotFoundError(f"{path} has no glossary entries (':term:' lines): is it the Jargon File?")
    appendices = _APPENDICES.search(text, heads[-1])
    ends = heads[1:] + [appendices.start() if appendices else len(text)]
    entries = (textwrap.dedent(text[start:end]).strip() for start, end in zip(heads, ends))
    return [entry for entry in entries if entry and not _TABLE.search(entry)]
