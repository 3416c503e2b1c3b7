"""Healing that survives a kill: the optimization state, saved atomically every N steps, and resumed.

The file holds the trained tensors, Adam's and the schedule's state, the loss history, the step and
the RNG state, under a fingerprint of everything that determines them (healer options, masks,
calibration size, trained names). A rerun of the same command finds it and continues from that
step with bit-identical results on a CPU; a file of another configuration is ignored.
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from starfish_cli.runtime.atomic import write_atomically
from starfish_cli.runtime.errors import first_line

log = logging.getLogger("starfish")


def fingerprint_of(identity: Any) -> str:
    """A short hash of everything that determines the healing's trajectory."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResumeState:
    def __init__(self, path: Path | None, every: int, identity: Any):
        self.path, self.every = (Path(path) if path else None), every
        self.fingerprint = fingerprint_of(identity)

    @property
    def enabled(self) -> bool:
        return self.path is not None and self.every > 0

    def load(self) -> dict[str, Any] | None:
        if not self.enabled or not self.path.is_file():
            return None
        try:  # tensors, numbers and lists only: nothing is unpickled
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a file cut short by a kill during an older save: start over
            log.warning("ignoring %s (%s): healing starts from step 0", self.path, first_line(error, 120))
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.info("ignoring %s: it was saved by another healing configuration", self.path)
            return None
        log.info("resuming healing from %s at step %d", self.path, state["step"])
        return state

    def due(self, step: int, total: int) -> bool:
        return self.enabled and step % self.every == 0 and step < total

    def save(self, step: int, parameters: dict[str, torch.nn.Parameter], optimizer, scheduler,
             history: list[float]) -> None:
        state = {
            "fingerprint": self.fingerprint, "step": step, "history": list(history),
            "parameters": {name: p.detach().cpu().clone() for name, p in parameters.items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        write_atomically(self.path, lambda tmp: torch.save(state, tmp))

    def remove(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)

    @torch.no_grad()
    def resume(self, parameters: dict[str, torch.nn.Parameter], optimizer, scheduler, history: list[float]) -> int:
        """Load the saved state, if any, into the parameters, Adam and the schedule; the step to continue from."""
        state = self.load()
        if state is None:
            return 0
        for name, parameter in parameters.items():
            parameter.copy_(state["parameters"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history[:] = state["history"]
        torch.set_rng_state(state["rng"])
        return int(state["step"])
