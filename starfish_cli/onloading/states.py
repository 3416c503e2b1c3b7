"""Where the hidden states passed between decoder layers live: in host memory, or, past a budget, in files
mapped into memory (the OS writes their pages out and reads them back as a layer needs them, so the process
never has to hold every window's states of every model at once)."""

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("starfish")
PLACEMENTS = ("auto", "host", "disk")


@dataclass
class HiddenStates:
    """`spill_folder` None: always on the host; else on disk once the streams' bytes pass `host_budget`."""

    spill_folder: Path | None = None
    host_budget: int = 0
    on_disk: bool = False

    def place(self, stream_bytes: int) -> None:
        """Decide for the whole pass, from what the streams will hold at most."""
        self.on_disk = self.spill_folder is not None and stream_bytes > self.host_budget
        if self.on_disk:
            log.info("hidden states between layers: %.3g GB, more than %.3g GB of host memory allowed: kept in "
                     "files under %s", stream_bytes / 1e9, self.host_budget / 1e9, self.spill_folder)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A host tensor, backed by a file when the states are on disk."""
        if not self.on_disk:
            return torch.empty(shape, dtype=dtype)
        self.spill_folder.mkdir(parents=True, exist_ok=True)
        handle, path = tempfile.mkstemp(dir=self.spill_folder, suffix=".states")
        os.close(handle)
        stored = torch.from_file(path, shared=True, size=math.prod(shape), dtype=dtype)
        os.unlink(path)  # the mapping keeps the pages; the disk space goes with the last view of them
        return stored.view(shape)

    def empty_like(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.empty(tuple(tensor.shape), tensor.dtype)

    def hold(self, batches: list[torch.Tensor]) -> torch.Tensor:
        """Batches of equal trailing shape as one tensor, where the states live."""
        whole = self.empty((sum(len(b) for b in batches), *batches[0].shape[1:]), batches[0].dtype)
        return torch.cat(batches, out=whole)
