"""A knowledge test from Debian's WordNet (package `wordnet-base`): a word's definition and four candidate
words of the same part of speech, one of them right; built from WordNet's data and index files, seeded."""

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DIR = Path("/usr/share/wordnet")  # Debian package wordnet-base; WordNet's own WNSEARCHDIR overrides it
PACKAGE = "wordnet-base"
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")  # data.<part> and index.<part> in the WordNet folder
CHOICES = 4
ITEMS_SEED = 0
COMMON_WORD = re.compile(r"[a-z]{3,12}")  # single-word lemmas of everyday spelling: no phrases, names, numbers
_ADJECTIVE_MARKER = re.compile(r"\([a-z]+\)$")  # "galore(ip)": where an adjective may stand
_LEADING_NOTE = re.compile(r"^\([^)]*\)\s*")  # "(usually followed by `to') having …": usage, not meaning


@dataclass(frozen=True)
class Synset:
    """One meaning: its words as WordNet spells them (case kept, `_` for spaces) and its definition."""

    words: tuple[str, ...]
    definition: str


@dataclass(frozen=True)
class Lemma:
    """A word of one part of speech: its meanings (synset offsets), most frequent first, and how many of them
    were seen in WordNet's sense-tagged corpus (0: the word never occurred there, a rare word)."""

    word: str
    synsets: tuple[int, ...]
    tagged_senses: int


def read_synsets(path: Path) -> dict[int, Synset]:
    """{offset: Synset} of a WordNet data file (`data.noun`, …): one synset a line, `offset lex_filenum
    ss_type w_cnt (word lex_id)… p_cnt pointers… | gloss`; the license header lines start with spaces."""
    synsets = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" ") or " | " not in line:
            continue
        fields, gloss = line.split(" | ", 1)
        parts = fields.split()
        count = int(parts[3], 16)
        words = tuple(_ADJECTIVE_MARKER.sub("", word) for word in parts[4:4 + 2 * count:2])
        synsets[int(parts[0])] = Synset(words, definition_of(gloss))
    return synsets


def read_index(path: Path) -> list[Lemma]:
    """The lemmas of a WordNet index file (`index.noun`, …), in file order: `lemma pos synset_cnt p_cnt
    ptr_symbol… sense_cnt tagsense_cnt synset_offset…`."""
    lemmas = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" "):
            continue
        parts = line.split()
        synset_count, pointer_count = int(parts[2]), int(parts[3])
        tagged = int(parts[5 + pointer_count])
        offsets = tuple(int(offset) for offset in parts[6 + pointer_count:6 + pointer_count + synset_count])
        lemmas.append(Lemma(parts[0], offsets, tagged))
    return lemmas


def definition_of(gloss: str) -> str:
    """A gloss's definition: without its quoted examples (`…; "she was able to swim"`), a leading usage note
    or a final full stop (a prompt adds its own)."""
    definition = re.split(r';\s*"', gloss.strip(), maxsplit=1)[0].strip().rstrip(";.").strip()
    return _LEADING_NOTE.sub("", definition).strip()


def gives_away(word: str, definition: str | set[str]) -> bool:
    """Whether the definition (or its lowercase words) names the word, one of its family or one of its parts
    ("quickly": "in a quick manner", "sleep": "be asleep", "firelight": "the light of a fire"); erring on the
    side of yes costs an item, never a fair question."""
    tokens = re.findall(r"[a-z]+", definition.lower()) if isinstance(definition, str) else definition
    stem = word[:max(3, len(word) - 3)]
    return any(token.startswith(stem) or word in token or (len(token) >= 4 and token in word) for token in tokens)


def common_words(lemmas: list[Lemma], synsets: dict[int, Synset]) -> dict[str, Lemma]:
    """{word: Lemma} of the everyday words among `lemmas`: one lowercase word of 3 to 12 letters, seen in
    the sense-tagged corpus, spelled so in its most frequent meaning (not a name there, like "bombay")."""
    common = {}
    for lemma in lemmas:
        if not COMMON_WORD.fullmatch(lemma.word) or lemma.tagged_senses < 1 or not lemma.synsets:
            continue
        first = synsets.get(lemma.synsets[0])
        if first is not None and lemma.word in first.words:
            common[lemma.word] = lemma
    return common


def wordnet_dir() -> Path:
    """WordNet's data folder: $WNSEARCHDIR (the variable WordNet's own tools read), else Debian's."""
    return Path(os.environ.get("WNSEARCHDIR") or SYSTEM_DIR)


def definition_items(directory: Path | None = None, count: int = 500, seed: int = ITEMS_SEED,
                     parts: tuple[str, ...] = PARTS_OF_SPEECH) -> list[dict]:
    """`count` items (all candidates when fewer), seeded: {"definition", "choices", "answer" (the index of the
    right word in choices), "word", "pos"}. A candidate is an everyday word that heads its most frequent
    meaning (the first of the synset's words: one item a meaning) and that the definition does not give away;
    its three distractors are other everyday words of the same part of speech that share none of its meanings
    nor its first four letters, and appear nowhere in the definition. `directory`: default wordnet_dir()."""
    directory = Path(directory) if directory is not None else wordnet_dir()
    missing = [name for part in parts for name in (f"data.{part}", f"index.{part}") if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"no WordNet {missing[0]} in {directory} (Debian package {PACKAGE})")
    candidates, pools = [], {}
    for part in parts:
        synsets = read_synsets(directory / f"data.{part}")
        words = common_words(read_index(directory / f"index.{part}"), synsets)
        pools[part] = sorted(words)
        for word in pools[part]:
            lemma = words[word]
            definition = synsets[lemma.synsets[0]].definition
            heads = synsets[lemma.synsets[0]].words[0] == word  # the word its meaning is listed under
            if heads and definition and not gives_away(word, definition):
                synonyms = {other.lower() for offset in lemma.synsets if offset in synsets
                            for other in synsets[offset].words}
                candidates.append((part, word, definition, synonyms))
    rng = random.Random(seed)
    rng.shuffle(candidates)
    items = []
    for part, word, definition, synonyms in candidates:
        if len(items) == count:
            break
        tokens = set(re.findall(r"[a-z]+", definition.lower()))

        def fits(other: str) -> bool:
            return (other not in synonyms and other[:4] != word[:4] and not gives_away(other, tokens))

        choices = _draw(rng, pools[part], fits, CHOICES - 1)
        if choices is None:
            continue
        answer = rng.randrange(CHOICES)
        choices.insert(answer, word)
        items.append({"definition": definition, "choices": choices, "answer": answer, "word": word, "pos": part})
    return items


def _draw(rng: random.Random, pool: list[str], fits, count: int) -> list[str] | None:
    """`count` different words of `pool` that fit, drawn at random (None when the pool has too few): a few
    draws find them in WordNet's thousands of words; a small pool is filtered whole."""
    chosen = []
    for _ in range(20 * count):
        other = rng.choice(pool)
        if other not in chosen and fits(other):
            chosen.append(other)
            if len(chosen) == count:
                return chosen
    rest = [other for other in pool if other not in chosen and fits(other)]
    if len(rest) < count - len(chosen):
        return None
    return chosen + rng.sample(rest, count - len(chosen))
