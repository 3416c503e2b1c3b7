"""Write two offline zero-shot tasks in lm-evaluation-harness's YAML format, built from the held-out test
split of the embedded corpus (data=fortunes_jargon), for `eval.tasks` with `eval.include_path=FOLDER`:

- `fortune_ending`: the first half of a test fortune; which of four second halves is its own (the other three
  are other test fortunes' endings), HellaSwag-style.
- `jargon_gloss`: a Jargon File entry's head (":term: pronunciation, part of speech"); which of four opening
  lines of a definition is its own.

Four-way multiple choice, acc and acc_norm (chance 25%); seeded, so the same files every time.
    python scripts/make_corpus_tasks.py FOLDER [--questions 200]
"""

import argparse
import json
import random
from pathlib import Path

from starfish_cli.data import fortunes, jargon

CHOICES = 4


def fortune_questions(documents: list[str], rng: random.Random) -> list[dict]:
    """Fortunes of 8–60 words, cut in half at a word boundary."""
    halves = []
    for text in documents:
        words = text.split(" ")
        if 8 <= len(text.split()) <= 60 and "\n\n" not in text:
            middle = len(words) // 2
            halves.append((" ".join(words[:middle]), " " + " ".join(words[middle:])))
    return multiple_choice(halves, rng)


def gloss_questions(entries: list[str], rng: random.Random) -> list[dict]:
    """An entry's head line, and the first 12 words of its definition."""
    pairs = []
    for entry in entries:
        head, _, body = entry.partition("\n\n")
        words = body.split()
        if len(words) >= 12:
            pairs.append((head.strip() + "\n\n", " ".join(words[:12])))
    return multiple_choice(pairs, rng)


def multiple_choice(pairs: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    questions = []
    for index, (context, ending) in enumerate(pairs):
        others = rng.sample([i for i in range(len(pairs)) if i != index], CHOICES - 1)
        choices = [pairs[i][1] for i in others]
        answer = rng.randrange(CHOICES)
        choices.insert(answer, ending)
        questions.append({"context": context, "choices": choices, "answer": answer})
    return questions


def task_yaml(name: str, data: Path) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
            "target_delimiter: \"\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: answer\nmetric_list:\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--questions", type=int, default=200, help="per task (the first N, seeded order)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    test = {"fortune_ending": fortunes.split_fortunes(fortunes.read_fortunes())["test"],
            "jargon_gloss": fortunes.split_fortunes(jargon.read_jargon())["test"]}
    build = {"fortune_ending": fortune_questions, "jargon_gloss": gloss_questions}
    args.folder.mkdir(parents=True, exist_ok=True)
    for name, documents in test.items():
        questions = build[name](documents, random.Random(args.seed))[:args.questions]
        data = (args.folder / f"{name}.jsonl").resolve()
        data.write_text("".join(json.dumps(question) + "\n" for question in questions))
        (args.folder / f"{name}.yaml").write_text(task_yaml(name, data))
        print(f"{name}: {len(questions)} questions → {data}")


if __name__ == "__main__":
    main()
