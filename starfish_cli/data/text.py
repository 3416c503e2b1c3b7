"""Text datasets as `datasets.Dataset` splits (column `text`), and the token windows a causal LM is
calibrated and evaluated on."""

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from starfish_cli.data import fortunes, jargon
from starfish_cli.data import tokens
from starfish_cli.data.calibration import CalibrationSampler
from starfish_cli.data.registry import DATASETS
from starfish_cli.runtime.errors import StarfishError, first_line


class TextSource:
    """A named text dataset with a split for calibration and one for evaluation. `separator`: `eos`
    ends every row with the tokenizer's end-of-text token (rows are documents), any other string
    joins the rows (rows are lines, as in wikitext: "\\n\\n")."""

    registered_name = "?"
    modality = "text"

    def __init__(self, calib_split: str = "train", eval_split: str = "test", separator: str = "eos",
                 text_column: str = "text"):
        self.calib_split, self.eval_split = calib_split, eval_split
        self.separator, self.text_column = separator, text_column

    def load(self, split: str) -> datasets.Dataset:
        raise NotImplementedError

    def describe(self, split: str) -> str:
        return f"{self.registered_name}/{split}"

    def token_stream(self, tokenizer, split: str) -> torch.Tensor:
        rows = self.load(split)
        if self.text_column not in rows.column_names:
            raise StarfishError(f"{self.describe(split)} has no column {self.text_column!r} "
                                f"(found {', '.join(rows.column_names)}): set data.text_column")
        documents = [row for row in rows[self.text_column] if row]
        # verbose=False: a split is longer than the model's context by design (it is cut into windows later)
        if self.separator == "eos":
            stream = tokens.token_stream(lambda doc: tokenizer(doc, verbose=False)["input_ids"], documents,
                                       tokenizer.eos_token_id)
        else:
            stream = torch.tensor(tokenizer(self.separator.join(documents), verbose=False)["input_ids"]
                                  if documents else [], dtype=torch.long)
        if len(stream) < 2:
            raise StarfishError(f"{self.describe(split)} has no text: give a split with some")
        return stream

    def calibration_items(self, sampler: CalibrationSampler, seed: int, labels_for: str | None, tokenizer,
                          context: int | None, window: int) -> tuple["TokenWindows", list[int], dict[str, Any]]:
        """`sampler.count` seeded windows of `sampler.seq_len` tokens (default: the model's `window`), their
        token offsets, and what the report says of them."""
        if labels_for:
            raise StarfishError(f"healer={labels_for} needs labels, and text has none: choose another healer")
        length = window_length(sampler.seq_len, context, window, "calib.seq_len")
        stream = self.token_stream(tokenizer, self.calib_split)
        count = sampler.count if sampler.count is not None else max(1, round(sampler.fraction * (len(stream) // length)))
        offsets = calibration_windows(stream, count, length, seed)
        windows = torch.stack([stream[offset:offset + length] for offset in offsets])
        return TokenWindows(windows), offsets, {"balanced": False, "seq_len": length, "offsets": "token offsets"}

    def evaluation_items(self, max_items: int | None, tokenizer, context: int | None, window: int,
                         seq_len: int | None = None) -> tuple["TokenWindows", None]:
        """Consecutive, non-overlapping windows of `seq_len` tokens (default: the model's `window`) over the
        whole split (the first `max_items`), targets included."""
        length = window_length(seq_len, context, window, "eval.seq_len")
        stream = self.token_stream(tokenizer, self.eval_split)
        chosen = tokens.windows(stream, length)
        if not len(chosen):
            raise StarfishError(f"{self.describe(self.eval_split)} has {len(stream)} tokens, fewer than one window "
                                f"of {length}: give a longer evaluation split or lower eval.seq_len")
        return TokenWindows(chosen[:max_items] if max_items else chosen, with_targets=True), None


def window_length(asked: int | None, context: int | None, window: int, option: str) -> int:
    """The window a user asked for (`option`), else the model's default; never past the model's context."""
    length = asked or window
    if context is not None and length > context:
        raise StarfishError(f"{option}={length} is longer than the model's context of {context} tokens: "
                            f"lower {option}")
    return length


def read_text_split(loader, what: str, hint: str):
    datasets.disable_progress_bars()
    try:
        return loader()
    except Exception as error:  # datasets raises many types: offline, missing files, bad configs
        raise StarfishError(f"could not read {what} ({first_line(error, 150)}): {hint}") from error
    finally:
        datasets.enable_progress_bars()


@DATASETS.register("fortunes")
class Fortunes(TextSource):
    """The embedded corpus: Debian's fortunes, split by fortune (90/5/5, fixed seed)."""

    def __init__(self, path: str = str(fortunes.SYSTEM_DIR), calib_split: str = "train", eval_split: str = "test"):
        super().__init__(calib_split, eval_split)
        self.path = path

    def load(self, split):
        if split not in fortunes.SPLIT_FRACTIONS:
            raise StarfishError(f"fortunes has no split {split!r}: use {', '.join(fortunes.SPLIT_FRACTIONS)}")
        if not Path(self.path).expanduser().is_dir():
            raise StarfishError(f"no fortunes at {self.path}: apt-get install fortunes, or set data.path")
        try:
            splits = fortunes.split_fortunes(fortunes.read_fortunes(Path(self.path).expanduser()))
        except FileNotFoundError as error:
            raise StarfishError(f"{error}: apt-get install fortunes, or set data.path") from error
        return datasets.Dataset.from_dict({"text": splits[split]})


@DATASETS.register("fortunes_jargon")
class FortunesJargon(Fortunes):
    """A larger embedded corpus: Debian's fortunes and the Jargon File's glossary (package jargon-text),
    each split by document with fortunes' fixed seeded 90/5/5 split, then joined split by split (so its
    fortunes are exactly `data=fortunes`' of the same split, followed by the jargon entries)."""

    def __init__(self, path: str = str(fortunes.SYSTEM_DIR), jargon_path: str = str(jargon.SYSTEM_FILE),
                 calib_split: str = "train", eval_split: str = "test"):
        super().__init__(path, calib_split, eval_split)
        self.jargon_path = jargon_path

    def load(self, split):
        fortune_rows = list(super().load(split)["text"])
        try:
            entries = jargon.read_jargon(Path(self.jargon_path).expanduser())
        except FileNotFoundError as error:
            raise StarfishError(f"{error}: apt-get install jargon-text, or set data.jargon_path") from error
        return datasets.Dataset.from_dict({"text": fortune_rows + fortunes.split_fortunes(entries)[split]})


@DATASETS.register("text_files")
class TextFiles(TextSource):
    """Local text files per split, read by `datasets`' text loader (a file is one document)."""

    def __init__(self, train: str | None = None, validation: str | None = None, test: str | None = None,
                 calib_split: str = "train", eval_split: str = "test", separator: str = "eos"):
        super().__init__(calib_split, eval_split, separator)
        self.files = {name: path for name, path in (("train", train), ("validation", validation), ("test", test)) if path}
        for name, path in self.files.items():
            if not Path(path).expanduser().is_file():
                raise StarfishError(f"data.{name}={path!r} is not a file: give a text file")

    def load(self, split):
        if split not in self.files:
            raise StarfishError(f"text_files has no {split} file: set data.{split}=FILE")
        files = {split: str(Path(self.files[split]).expanduser())}
        return read_text_split(lambda: datasets.load_dataset("text", data_files=files, sample_by="document", split=split),
                     files[split], "give a UTF-8 text file")


@DATASETS.register("hub_text")
class HubText(TextSource):
    """A text dataset from the HF hub (or a local folder of its files): wikitext-2-raw-v1 by default."""

    def __init__(self, hub_id: str = "Salesforce/wikitext", config: str | None = "wikitext-2-raw-v1",
                 calib_split: str = "train", eval_split: str = "test", separator: str = "\n\n",
                 text_column: str = "text"):
        super().__init__(calib_split, eval_split, separator, text_column)
        self.hub_id, self.config = hub_id, config

    def load(self, split):
        return read_text_split(lambda: datasets.load_dataset(self.hub_id, self.config, split=split),
                     f"{self.hub_id} split {split!r}", "check network access to the HF hub, or data=text_files")


def calibration_windows(stream: torch.Tensor, count: int, length: int, seed: int) -> list[int]:
    """`count` seeded, sorted start offsets of `length`-token windows in `stream`, without overlap
    (drawn among the stream's whole windows)."""
    whole = len(stream) // length
    if count > whole:
        raise StarfishError(f"calib.count={count} windows of calib.seq_len={length} tokens do not fit the "
                            f"{len(stream)} tokens of the calibration split: lower calib.count or calib.seq_len")
    chosen = np.random.default_rng(seed).choice(whole, size=count, replace=False)
    return sorted(int(i) * length for i in chosen)


class TokenWindows(torch.utils.data.Dataset):
    """Items `(index, tokens)` (calibration) or `(index, tokens, tokens)` (evaluation: the targets are the
    window's own next tokens) of fixed-length token windows."""

    def __init__(self, windows: torch.Tensor, with_targets: bool = False):
        self.windows, self.with_targets = windows, with_targets

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, index):
        window = self.windows[index]
        return (index, window, window) if self.with_targets else (index, window)
