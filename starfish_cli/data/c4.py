"""C4 as the LLM-pruning papers use it (SparseGPT, Wanda, OWL): calibration windows from the first English
train shard, each cut from one randomly chosen document longer than the window (Python's `random`, seeded);
perplexity over the first 256 windows of the first 1,100 validation documents joined by spaces."""

import random
from pathlib import Path
from typing import Any

import datasets
import torch

from starfish_cli.data.calibration import CalibrationSampler
from starfish_cli.data.registry import DATASETS
from starfish_cli.data.text import TextSource, TokenWindows, read_text_split, window_length
from starfish_cli.runtime.errors import StarfishError

TRIES_PER_WINDOW = 1000  # documents drawn for one window before giving up: the shard's are rarely all short


@DATASETS.register("c4")
class C4(TextSource):
    """`hub_id`: allenai/c4 on the hub, or a local folder holding the same files (`train_file`, `validation_file`)."""

    def __init__(self, hub_id: str = "allenai/c4", train_file: str = "en/c4-train.00000-of-01024.json.gz",
                 validation_file: str = "en/c4-validation.00000-of-00008.json.gz", calib_split: str = "train",
                 eval_split: str = "validation", eval_documents: int = 1100, eval_windows: int = 256):
        super().__init__(calib_split, eval_split, separator=" ")
        self.hub_id, self.files = hub_id, {"train": train_file, "validation": validation_file}
        self.eval_documents, self.eval_windows = eval_documents, eval_windows

    def load(self, split: str) -> datasets.Dataset:
        if split not in self.files:
            raise StarfishError(f"c4 has no split {split!r}: use train or validation")
        source = str(Path(self.hub_id).expanduser()) if Path(self.hub_id).expanduser().is_dir() else self.hub_id
        files = {split: self.files[split]}
        rows = read_text_split(lambda: datasets.load_dataset(source, data_files=files, split=split),
                               f"{self.hub_id}/{self.files[split]}",
                               "check network access to the HF hub, or give data.hub_id=DIR holding the shard")
        # the evaluation protocol reads the first documents of the validation shard only
        return rows.select(range(min(self.eval_documents, len(rows)))) if split == self.eval_split else rows

    def calibration_items(self, sampler: CalibrationSampler, seed: int, labels_for: str | None, tokenizer,
                          context: int | None, window: int) -> tuple[TokenWindows, list[list[int]], dict[str, Any]]:
        """`calib.count` windows, each from a document drawn at random until one is longer than the window, at
        a random offset in it; indices are (document, token offset) pairs."""
        if labels_for:
            raise StarfishError(f"healer={labels_for} needs labels, and text has none: choose another healer")
        if sampler.count is None:
            raise StarfishError("data=c4 draws calib.count windows (the papers: 128): set calib.count")
        length = window_length(sampler.seq_len, context, window, "calib.seq_len")
        documents = self.load(self.calib_split)[self.text_column]
        draw = random.Random(seed)
        windows, indices = [], []
        for _ in range(sampler.count):
            for _ in range(TRIES_PER_WINDOW):
                document = draw.randint(0, len(documents) - 1)
                ids = tokenizer(documents[document], verbose=False)["input_ids"]
                if len(ids) > length:
                    break
            else:
                raise StarfishError(f"no document of {self.describe(self.calib_split)} found longer than "
                                    f"calib.seq_len={length} tokens: lower calib.seq_len")
            start = draw.randint(0, len(ids) - length - 1)
            windows.append(torch.tensor(ids[start:start + length], dtype=torch.long))
            indices.append([document, start])
        return TokenWindows(torch.stack(windows)), indices, {"balanced": False, "seq_len": length,
                                                              "offsets": "(document, token offset) pairs"}

    def evaluation_items(self, max_items: int | None, tokenizer, context: int | None, window: int,
                         seq_len: int | None = None) -> tuple[TokenWindows, None]:
        """The first `eval_windows` windows (or `eval.max_images`, when fewer) of the joined documents."""
        limit = min(max_items, self.eval_windows) if max_items else self.eval_windows
        return super().evaluation_items(limit, tokenizer, context, window, seq_len)
