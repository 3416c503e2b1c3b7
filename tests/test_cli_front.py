"""The front end before any stage runs: help without torch, refused flags and sweeps, one line each."""

import subprocess
import sys

import pytest

from starfish_cli.cli import main


def test_help_loads_no_torch():
    probe = ("import sys; from starfish_cli.cli import main; main(['--help']); "
             "print(sorted(m for m in ('torch', 'timm', 'transformers', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: starfish <stage>" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("flag", ["--shell-completion", "-sc"])
def test_shell_completion_is_refused_in_one_line(flag, capsys):
    assert main(["run", flag, "install=bash"]) == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and "offers no shell completion" in printed[0]


def test_every_value_of_a_sweep_is_checked_before_hydra_starts(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-m", "healer.epochs=1,2,-3", "pruner=magnitude,wanda"]) == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert printed == ["starfish: error: healer.epochs=-3 must be a whole number ≥ 0"]
    assert list(tmp_path.iterdir()) == []


def test_unknown_stage_and_version(capsys):
    assert main(["prun"]) == 2 and "unknown stage 'prun'" in capsys.readouterr().err
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("starfish 0.2.0")
