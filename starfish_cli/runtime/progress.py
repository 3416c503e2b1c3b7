"""Progress of long loops (pruning layers, healing steps, evaluation batches): a rich bar on a terminal,
plain lines in the `starfish` log elsewhere (cluster jobs, `| tee`), and only from rank 0 under torchrun."""

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from starfish_cli.runtime.distributed import launched_world

console = Console(stderr=True)
log = logging.getLogger("starfish")

LOG_STEPS = 10  # a known total: one line each time another tenth of it is done
LOG_EVERY_SECONDS = 60.0  # an unknown total: at most one line a minute


def format_fields(fields: Mapping[str, object]) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


def format_seconds(seconds: float) -> str:
    """H:MM:SS, like the bar's own time columns."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class ProgressLog:
    """Logs `description: done/total (percent)  rate/s  elapsed  eta  fields` each time another tenth of
    `total` is done, or, when the total is unknown, at most once every `LOG_EVERY_SECONDS`."""

    def __init__(self, description: str, total: int | None, clock: Callable[[], float] = time.monotonic):
        self.description, self.total, self.clock = description, total, clock
        self.done, self.logged_steps = 0, 0
        self.started = self.last_line = clock()

    def advance(self, **fields: object) -> None:
        self.done += 1
        now = self.clock()
        if self.total:
            steps = min(self.done, self.total) * LOG_STEPS // self.total
            if steps <= self.logged_steps:
                return
            self.logged_steps = steps
        elif now - self.last_line < LOG_EVERY_SECONDS:
            return
        self.last_line = now
        log.info(self.line(now, fields))

    def line(self, now: float, fields: Mapping[str, object]) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        if self.total:
            left = max(self.total - self.done, 0) / rate if rate > 0 else 0.0
            parts = [f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)", f"{rate:.3g}/s",
                     f"elapsed {format_seconds(elapsed)}", f"eta {format_seconds(left)}"]
        else:
            parts = [f"{self.done} done", f"{rate:.3g}/s", f"elapsed {format_seconds(elapsed)}"]
        return f"{self.description}: " + "  ".join(parts + ([format_fields(fields)] if fields else []))


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yields `advance(**fields)`; fields (e.g. loss=0.12) are shown beside the bar or in the log line.

    The launched world's rank (torchrun's RANK) decides, so it holds before the process group exists."""
    if not launched_world().is_main:
        yield lambda **fields: None
    elif not console.is_terminal:
        yield ProgressLog(description, total).advance
    else:
        with _rich_bar(description, total) as advance:
            yield advance


@contextmanager
def _rich_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(**fields: object) -> None:
            progress.update(task, advance=1, info=format_fields(fields))

        yield advance
