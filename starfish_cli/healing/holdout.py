"""Early stopping on a held-out slice of the calibration set (`healer.holdout`): the loop trains on the rest,
measures the same loss on the held-out items before the first step and after every epoch, keeps the trained
weights of the best measurement and ends with them; `patience` epochs without a better one stop it early."""

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from starfish_cli.data.loader import loader
from starfish_cli.runtime.device import autocast
from starfish_cli.runtime.errors import StarfishError

log = logging.getLogger("starfish")


def split_holdout(calibration: torch.utils.data.Dataset, fraction: float, seed: int, processes: int = 1):
    """(the items trained on, the held-out items) of `calibration`: a seeded `fraction` of it held out, at least
    one item on each side; (calibration, None) when `fraction` is 0. Items keep their indices (teacher caches
    and block targets are looked up by them). `processes`: the world size (more than one is refused)."""
    check_holdout(fraction, None, processes)
    if not fraction:
        return calibration, None
    count = len(calibration)
    held = held_out_count(fraction, count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return (torch.utils.data.Subset(calibration, sorted(order[held:])),
            torch.utils.data.Subset(calibration, sorted(order[:held])))


def check_holdout(fraction: float, count: int | None, processes: int) -> None:
    """A held-out slice needs items on both sides (where `count` is known) and one process: under torchrun each
    rank would hold out and measure a different share."""
    if not fraction:
        return
    if count is not None:
        held_out_count(fraction, count)
    if processes > 1:
        raise StarfishError("healer.holdout runs in one process: launch it without torchrun, or set healer.holdout=0")


def held_out_count(fraction: float, count: int) -> int:
    """How many of `count` calibration items `fraction` holds out: at least one, and one left to train on."""
    held = round(fraction * count)
    if not 0 < held < count:
        raise StarfishError(f"healer.holdout={fraction} of {count} calibration items holds out {held}: choose a "
                            "fraction that leaves at least one item on each side, or raise calib.count")
    return held


class EarlyStopping:
    """The held-out loss of `loss_of_batch` under `forward`, measured at each epoch's end; the best epoch's
    `trained` tensors are kept on the host and restored by `finish`. `record`: a dict to fill (report.json)."""

    def __init__(self, held_out, loss_of_batch: Callable, forward: nn.Module | None, trained: Mapping[str, Any],
                 batch_size: int, patience: int, device, precision, description: str):
        self._batches = loader(held_out, batch_size, device=device)
        self._loss, self._forward, self._trained = loss_of_batch, forward, trained
        self._patience, self._device, self._precision = patience, device, precision
        self.record: dict[str, Any] = {"job": description, "items": len(held_out), "epochs": [], "losses": [],
                                       "best_epoch": None}
        self._best: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def measure(self) -> float:
        total = count = 0
        with autocast(self._device, self._precision):
            for batch in self._batches:
                size = len(batch[0])
                total += float(self._loss(batch, self._forward)) * size
                count += size
        return total / count

    def observe(self, epoch: int) -> bool:
        """Measure after `epoch` epochs (0: before any step); True when `patience` epochs have passed without a
        better held-out loss."""
        record, loss = self.record, self.measure()
        if record["best_epoch"] is None or loss <= min(record["losses"]):
            record["best_epoch"] = epoch
            self._best = {name: tensor.detach().to("cpu", copy=True) for name, tensor in self._trained.items()}
        record["epochs"].append(epoch)
        record["losses"].append(loss)
        return bool(self._patience) and epoch - record["best_epoch"] >= self._patience

    @torch.no_grad()
    def finish(self, selection: list[dict] | None = None) -> None:
        """Restore the best epoch's weights (masked weights were zero then too); what was measured is appended to
        `selection`."""
        for name, tensor in self._trained.items():
            tensor.copy_(self._best[name].to(tensor.device))
        record = self.record
        log.info("%s: held-out loss %.5f at epoch %d, %.5f at epoch %d (kept), %.5f at epoch %d", record["job"],
                 record["losses"][0], record["epochs"][0], min(record["losses"]), record["best_epoch"],
                 record["losses"][-1], record["epochs"][-1])
        if selection is not None:
            selection.append(record)
