"""The WordNet definitions task (eval.tasks=[wordnet_definitions]): items built from a tiny WordNet written here
in WordNet's own file format (seeded, the right word among four of the same part of speech, no synonym as a
distractor), the task YAML that lm-eval loads from the cache, and the one-line refusal without the dictionary."""

from collections import Counter
from pathlib import Path

import pytest

from conftest import run_in_process
from starfish_cli.data.dictionary import SYSTEM_DIR, definition_items, definition_of, read_index, read_synsets

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
# (words as in the data file, gloss, tagged senses of the first word): every synset here is its words' first meaning
NOUNS = [
    (["dog", "domestic_dog"], 'a domesticated carnivorous mammal; "the dog barked all night"', 5),
    (["car", "auto", "automobile"], "a motor vehicle with four wheels", 9),
    (["house"], "a dwelling that serves as living quarters for a family", 7),
    (["river"], "a large natural stream of water", 4),
    (["apple"], "fruit with red or yellow or green skin and crisp flesh", 3),
    (["table"], "a piece of furniture having a smooth flat top", 6),
    (["chair"], "a seat for one person, with a support for the back", 6),
    (["window"], "a framework of wood or metal that contains a glass windowpane", 2),
    (["Paris"], "the capital and largest city of France", 8),  # a name
    (["hot_dog"], "a frankfurter served hot on a bun", 2),  # a phrase
    (["quoin"], "the keystone of an arch", 0),  # never in the tagged corpus: rare
    (["teacher"], "a person whose occupation is teaching", 4),  # "teaching" gives it away
]
VERBS = [
    (["run"], 'move fast by using one\'s feet; "Don\'t run--you\'ll be out of breath"', 9),
    (["walk"], "use one's feet to advance", 8),
    (["eat"], "take in solid food", 7),
    (["sleep", "kip"], "be asleep", 6),
    (["sing"], "produce tones with the voice", 5),
    (["jump", "leap"], "move forward by leaps and bounds", 4),
]
ADJECTIVES = [(["able(a)"], "(usually followed by `to') having the necessary means or skill", 3)]


def write_part(folder: Path, part: str, pos: str, synsets: list) -> None:
    data, index = [HEADER], {}
    for number, (words, gloss, tagged) in enumerate(synsets):
        offset = 1000 + 100 * number
        listed = " ".join(f"{word} 0" for word in words)
        data.append(f"{offset:08d} 05 {pos} {len(words):02x} {listed} 000 | {gloss}  \n")
        for word in words:
            lemma = word.split("(")[0].lower()
            offsets, _ = index.get(lemma, ([], 0))
            index[lemma] = (offsets + [offset], tagged)
    lines = [HEADER] + [f"{lemma} {pos} {len(offsets)} 1 @ {len(offsets)} {tagged} "
                        + " ".join(f"{offset:08d}" for offset in offsets) + "  \n"
                        for lemma, (offsets, tagged) in sorted(index.items())]
    (folder / f"data.{part}").write_text("".join(data))
    (folder / f"index.{part}").write_text("".join(lines))


@pytest.fixture
def wordnet(tmp_path) -> Path:
    folder = tmp_path / "wordnet"
    folder.mkdir()
    for part, pos, synsets in (("noun", "n", NOUNS), ("verb", "v", VERBS), ("adj", "a", ADJECTIVES),
                               ("adv", "r", [])):
        write_part(folder, part, pos, synsets)
    return folder


def test_wordnet_files_are_read_as_synsets_and_lemmas(wordnet):
    synsets = read_synsets(wordnet / "data.noun")
    assert len(synsets) == len(NOUNS) and synsets[1100].words == ("car", "auto", "automobile")
    assert synsets[1000].definition == "a domesticated carnivorous mammal"  # the example left out
    assert read_synsets(wordnet / "data.adj")[1000].words == ("able",)  # the position marker "(a)" left out
    lemmas = {lemma.word: lemma for lemma in read_index(wordnet / "index.noun")}
    assert lemmas["auto"].synsets == (1100,) and lemmas["auto"].tagged_senses == 9
    assert lemmas["quoin"].tagged_senses == 0
    assert definition_of("(usually followed by `to') having the means; \"able to swim\"") == "having the means"
    assert definition_of("an indirect suggestion.") == "an indirect suggestion"


def test_items_are_seeded_and_each_holds_its_word_among_three_of_the_same_part_of_speech(wordnet):
    items = definition_items(wordnet, count=100)
    assert items == definition_items(wordnet, count=100) and items != definition_items(wordnet, count=100, seed=1)
    assert definition_items(wordnet, count=4) == items[:4]  # a smaller count keeps the first items
    nouns = {"dog", "car", "auto", "automobile", "house", "river", "apple", "table", "chair", "window", "teacher"}
    verbs = {"run", "walk", "eat", "sleep", "kip", "sing", "jump", "leap"}
    # never asked: a name (Paris), a phrase (hot_dog), a rare word (quoin), definitions that name their word
    # (teacher: "teaching", sleep: "asleep", window: "windowpane"), words that do not head their first
    # meaning (auto, automobile, kip, leap: synonyms of car, sleep, jump), a part of speech with too few words
    # for three distractors (adjectives: one)
    assert {item["word"] for item in items} == {"dog", "car", "house", "river", "apple", "table", "chair",
                                                 "run", "walk", "eat", "sing", "jump"}
    for item in items:
        choices, word = item["choices"], item["word"]
        assert len(choices) == 4 and len(set(choices)) == 4 and choices[item["answer"]] == word
        assert set(choices) <= (nouns if item["pos"] == "noun" else verbs)
        synonyms = {"car": {"auto", "automobile"}, "jump": {"leap"}}.get(word, set())
        assert not set(choices) & synonyms  # a synonym is never a distractor
        assert not any(other in item["definition"].split() for other in choices)
    assert next(item for item in items if item["word"] == "dog")["definition"] == "a domesticated carnivorous mammal"


@pytest.mark.skipif(not (SYSTEM_DIR / "data.noun").is_file(),
                    reason="WordNet not installed (apt-get install wordnet-base)")
def test_debians_wordnet_gives_500_items_with_the_answer_anywhere():
    items = definition_items(count=500)
    assert len(items) == 500 and len({(item["word"], item["pos"]) for item in items}) == 500
    assert set(Counter(item["pos"] for item in items)) == {"noun", "verb", "adj", "adv"}
    assert min(Counter(item["answer"] for item in items).values()) > 80  # about 125 each: no position favoured


@pytest.fixture
def caches(tmp_path, monkeypatch, wordnet):
    monkeypatch.setenv("WNSEARCHDIR", str(wordnet))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_task_is_written_into_the_cache_and_loads_in_lm_eval(caches, wordnet):
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
    from starfish_cli.evaluation.offline_tasks import write_task

    folder = write_task("wordnet_definitions")
    assert folder == caches / "starfish" / "tasks" / "wordnet_definitions"
    written = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert set(written) == {"wordnet_definitions.jsonl", "wordnet_definitions.yaml"}  # no temporary file left
    assert write_task("wordnet_definitions") == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == written  # the same: not rewritten

    manager = lm_eval_tasks.TaskManager(include_path=str(folder), include_defaults=False)
    assert manager.all_tasks == ["wordnet_definitions"]
    task = manager.load(["wordnet_definitions"])["tasks"]["wordnet_definitions"]
    docs = list(task.test_docs())
    items = definition_items(wordnet, count=500)
    assert len(docs) == len(items) == 12
    dog = next(doc for doc in docs if doc["word"] == "dog")
    assert task.doc_to_text(dog) == "Definition: a domesticated carnivorous mammal.\nWord:"
    assert task.doc_to_choice(dog) == dog["choices"] and dog["choices"][task.doc_to_target(dog)] == "dog"
    assert task.config.output_type == "multiple_choice"


def test_eval_tasks_find_it_in_the_cache_without_indexing_lm_evals_own_tasks(caches):
    pytest.importorskip("lm_eval")
    from starfish_cli.evaluation.zero_shot import ZeroShot

    zero_shot = ZeroShot(["wordnet_definitions"], task_limit=5)
    zero_shot.check()
    assert zero_shot._manager.all_tasks == ["wordnet_definitions"]  # the cache folder alone: lm-eval's never indexed
    assert (caches / "starfish" / "tasks" / "wordnet_definitions" / "wordnet_definitions.jsonl").is_file()


def test_a_missing_dictionary_is_one_line_naming_the_debian_package(caches, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from starfish_cli.evaluation.zero_shot import ZeroShot
    from starfish_cli.runtime.errors import StarfishError

    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "empty"))
    with pytest.raises(StarfishError) as error:
        ZeroShot(["wordnet_definitions"]).check()
    assert "apt-get install wordnet-base" in str(error.value) and "\n" not in str(error.value)
    assert not (caches / "starfish" / "tasks" / "wordnet_definitions").exists()


def test_the_cli_refuses_before_any_work_without_the_dictionary(caches, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "empty"))
    result = run_in_process("run", "model=lm_reference", "eval.tasks=[wordnet_definitions]", "hydra.run.dir=run",
                            cwd=tmp_path, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "eval.tasks=[wordnet_definitions] needs Debian's wordnet-base: apt-get install wordnet-base" in lines[0]
    assert not (tmp_path / "run" / "pruned.safetensors").exists()
