"""What a sweep (several runs in one process) evaluates again and again, kept between its runs."""

from collections.abc import Mapping

import torch


class SweepCache:
    """What a sweep evaluates again and again, kept in one process: the reference model's block states
    on the evaluation set (fp32, so every number equals a fresh computation; its head runs again on the
    last, rather than a causal LM's vocabulary-wide logits being kept) and finished results of models that
    several runs share (the same pruned checkpoint under different healers)."""

    def __init__(self, max_bytes: int = 4 * 2**30):
        self.max_bytes = max_bytes
        self.key: str | None = None
        self.batches: list | None = None
        self.seconds = 0.0
        self.results: dict[str, dict] = {}

    def reference_for(self, key: str | None):
        return self.batches if key is not None and key == self.key else None

    def store_reference(self, key: str, batches: list, seconds: float) -> None:
        self.key, self.batches, self.seconds = key, batches, seconds

    def start_recording(self, key: str | None) -> "ReferenceRecording | None":
        """None when there is nothing to record: no key, or this key's outputs are already here."""
        if key is None or self.reference_for(key) is not None:
            return None
        return ReferenceRecording(self, key)

    def results_for(self, keys: Mapping[str, str]) -> dict[str, dict]:
        return {name: self.results[key] for name, key in keys.items() if key in self.results}

    def store_results(self, keys: Mapping[str, str], results: Mapping[str, dict]) -> None:
        """The first results under a key stay: later models under it were given those."""
        for name, key in keys.items():
            if name in results:
                self.results.setdefault(key, results[name])


class ReferenceRecording:
    """The reference's block states of one run, batch by batch, given up as soon as they outgrow the
    cache's cap: a run whose states will not fit stops holding them then, not after its last batch."""

    def __init__(self, cache: SweepCache, key: str):
        self.cache, self.key = cache, key
        self.batches: list | None = []
        self.bytes = 0

    @property
    def active(self) -> bool:
        return self.batches is not None

    def add(self, states: list[torch.Tensor]) -> None:
        """`states`: each block's output, already fp32 on the host (taken as the blocks ran)."""
        if self.batches is None:
            return
        self.bytes += 4 * sum(state.numel() for state in states)
        if self.bytes > self.cache.max_bytes:
            self.batches = None
        else:
            self.batches.append(states)

    def finish(self, seconds: float) -> None:
        """`seconds`: the reference's compute time, reported again by the runs that reuse its outputs."""
        if self.batches is not None:
            self.cache.store_reference(self.key, self.batches, seconds)

