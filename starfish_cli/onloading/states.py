"""Where the hidden states passed between decoder layers live: in host memory, or, past a budget, in files
mapped into memory (the OS writes their pages out and reads them back as a layer needs them, so the process
never has to hold every window's states of every model at once)."""

import logging
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

    def empty_like(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor of `tensor`'s shape and dtype, backed by a file when the states are on disk."""
        if not self.on_disk:
            return torch.empty(tensor.shape, dtype=tensor.dtype)
        self.spill_folder.mkdir(parents=True, exist_ok=True)
        handle, path = tempfile.mkstemp(dir=self.spill_folder, suffix=".states")
        os.close(handle)
        stored = torch.from_file(path, shared=True, size=tensor.numel(), dtype=tensor.dtype)
        os.unlink(path)  # the mapping keeps the pages; the disk space goes with the last view of them
        return stored.view(tensor.shape)

    def hold(self, batches: list[torch.Tensor]) -> torch.Tensor:
        """Batches of equal trailing shape as one tensor, where the states live."""
        first = batches[0]
        whole = self.empty_like(torch.empty((sum(len(b) for b in batches), *first.shape[1:]), dtype=first.dtype,
                                            device="meta"))
        start = 0
        for batch in batches:
            whole[start:start + len(batch)].copy_(batch)
            start += len(batch)
        return whole
