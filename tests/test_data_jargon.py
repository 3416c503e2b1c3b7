"""The Jargon File reader (data/jargon.py) and data=fortunes_jargon, on small files of their layouts."""

import gzip

import pytest

from starfish_cli.data import DATASETS, fortunes
from starfish_cli.data.jargon import read_jargon
from starfish_cli.runtime.errors import StarfishError

JARGON = """\
                             The Jargon File

   Glossary

   ┌──────┬─────────────────────┐
   │ MIT  │ the front matter    │
   └──────┴─────────────────────┘

   :baroque: adj.

   [common] Feature-encrusted; complex; gaudy. See also
   {rococo}.

   :BASIC: /bay'·sic/, n.

   A programming language.

   1. Its second paragraph.

   :table entry: n.

   │ a │ b │

   :zorkmid: /zork'mid/, n.

   The canonical unit of currency in hacker-written games.

                             Part III. Appendices

   A. Hacker Folklore
"""


@pytest.fixture
def jargon_file(tmp_path):
    path = tmp_path / "jargon.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write(JARGON)
    return path


def test_entries_are_dedented_without_tables_front_matter_or_appendices(jargon_file):
    entries = read_jargon(jargon_file)
    assert [entry.splitlines()[0] for entry in entries] == [":baroque: adj.", ":BASIC: /bay'·sic/, n.",
                                                            ":zorkmid: /zork'mid/, n."]
    assert entries[0] == ":baroque: adj.\n\n[common] Feature-encrusted; complex; gaudy. See also\n{rococo}."
    assert entries[1].endswith("1. Its second paragraph.")
    assert "Appendices" not in entries[-1] and "Folklore" not in entries[-1]


def test_a_missing_or_foreign_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Jargon File"):
        read_jargon(tmp_path / "absent.txt.gz")
    (tmp_path / "plain.txt").write_text("no glossary here\n")
    with pytest.raises(FileNotFoundError, match="no glossary entries"):
        read_jargon(tmp_path / "plain.txt")


def test_fortunes_jargon_is_fortunes_split_then_jargon_split(jargon_file, tmp_path):
    fortune_dir = tmp_path / "fortunes"
    fortune_dir.mkdir()
    (fortune_dir / "wisdom").write_text("".join(f"Fortune number {i}.\n%\n" for i in range(60)))
    corpus = DATASETS.build({"name": "fortunes_jargon", "path": str(fortune_dir), "jargon_path": str(jargon_file)})
    alone = DATASETS.build({"name": "fortunes", "path": str(fortune_dir)})
    entry_splits = fortunes.split_fortunes(read_jargon(jargon_file))
    for split in fortunes.SPLIT_FRACTIONS:
        assert list(corpus.load(split)["text"]) == list(alone.load(split)["text"]) + entry_splits[split]
    assert sum(len(corpus.load(split)) for split in fortunes.SPLIT_FRACTIONS) == 60 + 3


def test_a_missing_jargon_file_says_what_to_install(tmp_path):
    corpus = DATASETS.build({"name": "fortunes_jargon", "jargon_path": str(tmp_path / "absent.gz")})
    with pytest.raises(StarfishError, match="apt-get install jargon-text, or set data.jargon_path"):
        corpus.load("test")
