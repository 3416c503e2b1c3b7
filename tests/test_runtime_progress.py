"""Progress off a terminal: plain lines in the `starfish` log, every tenth of the way, from rank 0 only."""

import io
import logging
import re

import pytest
import timm
from rich.console import Console

import starfish_cli.models  # noqa: F401  (registers vit_fmnist with timm)
from starfish_cli.models import structure_of
from starfish_cli.pruning import PRUNERS
from starfish_cli.runtime import progress
from starfish_cli.runtime.progress import ProgressLog, format_seconds, progress_bar


@pytest.fixture
def log_lines(monkeypatch, caplog):
    """The progress lines logged, with the console a pipe (not a terminal) and this process rank 0."""
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO()))
    monkeypatch.delenv("RANK", raising=False)
    caplog.set_level(logging.INFO, logger="starfish")
    return lambda: [record.getMessage() for record in caplog.records if record.name == "starfish"]


def test_off_a_terminal_one_line_per_tenth_with_rate_eta_and_fields(log_lines):
    with progress_bar("healing (test)", 100) as advance:
        for step in range(100):
            advance(loss=step / 100, epoch=1)
    lines = log_lines()
    assert len(lines) == 10
    assert lines[0].startswith("healing (test): 10/100 (10%)")
    assert lines[-1].startswith("healing (test): 100/100 (100%)")
    assert all(re.search(r"\S+/s  elapsed \d+:\d\d:\d\d  eta \d+:\d\d:\d\d", line) for line in lines)
    assert "loss 0.9900  epoch 1" in lines[-1]


def test_fewer_items_than_tenths_log_each_item(log_lines):
    with progress_bar("pruning (test)", 4) as advance:
        for _ in range(4):
            advance()
    assert [line.split(":")[1].split()[0] for line in log_lines()] == ["1/4", "2/4", "3/4", "4/4"]


def test_unknown_total_logs_once_a_minute(log_lines):
    now = [0.0]
    log = ProgressLog("evaluating", None, clock=lambda: now[0])
    for _ in range(300):
        now[0] += 1.0
        log.advance()
    lines = log_lines()
    assert len(lines) == 5 and lines[0] == "evaluating: 60 done  1/s  elapsed 0:01:00"


def test_eta_from_the_rate_so_far():
    now = [0.0]
    log = ProgressLog("healing", 100, clock=lambda: now[0])
    now[0] = 20.0
    log.done = 10
    assert log.line(now[0], {}) == "healing: 10/100 (10%)  0.5/s  elapsed 0:00:20  eta 0:03:00"
    assert format_seconds(3725) == "1:02:05"


def test_only_rank_zero_reports(log_lines, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with progress_bar("evaluating", 10) as advance:
        for _ in range(10):
            advance()
    assert log_lines() == []


def test_a_pruner_reports_each_layer(log_lines):
    model = timm.create_model("vit_fmnist", pretrained=True)
    layers = len(structure_of(model).prunable_layers())
    PRUNERS.build({"name": "magnitude", "sparsity": 0.5}).prune(model)
    lines = [line for line in log_lines() if line.startswith("pruning (magnitude): ")]
    assert lines and lines[-1].startswith(f"pruning (magnitude): {layers}/{layers} (100%)")
    assert len(lines) == min(layers, 10)

