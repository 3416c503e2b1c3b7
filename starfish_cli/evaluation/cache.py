"""What a sweep (several runs in one process) evaluates again and again, kept between its runs."""


class SweepCache:
    """What a sweep evaluates again and again, kept in one process: the reference model's outputs
    on the evaluation set (fp32, so every number equals a fresh computation) and finished results
    of models that several runs share (the same pruned checkpoint under different healers)."""

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


SWEEP_CACHE = SweepCache()
