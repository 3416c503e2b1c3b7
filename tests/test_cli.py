"""The `starfish` command end to end on shrunk sizes: in process (`run_in_process` calls the CLI's `main`), with
one subprocess test each of `starfish run`, of the prune → heal → eval stages and of `starfish report`."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from conftest import SHRUNK, needs_fmnist, read_json, run_cli, run_in_process
from starfish_cli.artifacts.checkpoint import load_checkpoint
from starfish_cli.pruning.masks import fits_nm

pytestmark = needs_fmnist
REPORT_KEYS = ["accuracy.dense.top1", "accuracy.pruned.top1", "accuracy.healed.top1", "recovery",
               "sparsity.prunable", "calibration.count", "calibration.labels_used", "seed"]


def lookup(report, dotted):
    for key in dotted.split("."):
        report = report[key]
    return report


@pytest.mark.slow
def test_run_writes_a_complete_run_folder(tmp_path):
    result = run_cli("run", *SHRUNK, "hydra.run.dir=out", cwd=tmp_path)
    folder = tmp_path / "out"
    for name in ("config.yaml", "pruned.safetensors", "healed.safetensors", "report.json", "report.md",
                 "calibration_indices.json", "run.log"):
        assert (folder / name).is_file(), name
    report = read_json(folder / "report.json")
    for key in REPORT_KEYS:
        lookup(report, key)
    assert report["calibration"]["count"] == 32 and report["calibration"]["labels_used"] is False
    assert report["sparsity"]["prunable"] == pytest.approx(0.75, abs=1e-3)
    assert report["recovery"] == pytest.approx(report["accuracy"]["healed"]["top1"] / report["accuracy"]["dense"]["top1"])
    assert len(json.loads((folder / "calibration_indices.json").read_text())["indices"]) == 32
    assert "pruned" in result.stdout and "healed" in result.stdout  # the rich table
    assert "Loading pretrained weights" not in result.stdout  # timm's chatter is in the log file only
    assert "Loading pretrained weights" in (folder / "run.log").read_text()
    assert "wanda" in (folder / "config.yaml").read_text()
    for loop in ("pruning (wanda)", "healing (starfish)", "evaluating"):  # output captured: progress as log lines
        assert re.search(rf"{re.escape(loop)}: \d+/\d+ \(100%\)  \S+/s  elapsed ", result.stdout), loop
        assert f"{loop}: " in (folder / "run.log").read_text()


@pytest.mark.slow
def test_same_seed_same_numbers(tmp_path):
    reports = []
    for folder in ("a", "b"):
        run_in_process("run", *SHRUNK, "pruner=random", f"hydra.run.dir={folder}", cwd=tmp_path)
        reports.append(read_json(tmp_path / folder / "report.json"))
    for report in reports:  # throughput is a timing, not a result
        for model in ("dense", "pruned", "healed"):
            report["accuracy"][model].pop("images_per_second")
    for key in ("accuracy", "recovery", "sparsity", "healing", "calibration"):
        assert json.dumps(reports[0][key], sort_keys=True) == json.dumps(reports[1][key], sort_keys=True), key


@pytest.mark.slow
def test_two_four_pattern_masks_on_disk(tmp_path):
    run_in_process("run", *SHRUNK, "pruner.pattern=2:4", "hydra.run.dir=out", cwd=tmp_path)
    for name in ("pruned.safetensors", "healed.safetensors"):
        checkpoint = load_checkpoint(tmp_path / "out" / name, "prune")
        assert checkpoint.masks and all(fits_nm(m, 2, 4) for m in checkpoint.masks.values())
        for layer, mask in checkpoint.masks.items():
            assert torch.all(checkpoint.weights[f"{layer}.weight"][~mask] == 0)
    assert read_json(tmp_path / "out" / "report.json")["healing"]["steps"] == 1


@pytest.mark.slow
def test_stages_apart_as_a_multirun_sweep(tmp_path):
    sweep = ["-m", "pruner.sparsity=0.5,0.75", *SHRUNK]
    for stage in ("prune", "heal", "eval"):
        run_cli(stage, *sweep, cwd=tmp_path)
    pruning_reports = sorted((tmp_path / "outputs").rglob("seed0/report.json"))  # `starfish prune` writes one too
    reports = sorted((tmp_path / "outputs").rglob("seed0/*/report.json"))
    assert len(reports) == 2 and len(pruning_reports) == 2
    sparsities = sorted(read_json(r)["sparsity"]["prunable"] for r in reports)
    assert sparsities == pytest.approx([0.5, 0.75], abs=1e-3)
    for report in map(read_json, reports):
        assert {"prune", "heal", "eval"} <= set(report["stages"]) and "accuracy" in report


def test_config_file_from_any_folder(tmp_path):
    experiment = tmp_path / "mine.yaml"
    experiment.write_text("# @package _global_\ndefaults:\n  - override /pruner: magnitude\npruner:\n  sparsity: 0.6\n")
    printed = run_in_process("run", "--config", str(experiment), "--cfg", "job", cwd=tmp_path).stdout
    assert "name: magnitude" in printed and "sparsity: 0.6" in printed
    shipped = run_in_process("prune", "--config", "fmnist_wanda_75", "--cfg", "job", "pruner.sparsity=0.8", cwd=tmp_path)
    assert "name: wanda" in shipped.stdout and "sparsity: 0.8" in shipped.stdout


def _bad_checkpoint(tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__meta")
    else:
        save_file({"weight": torch.zeros(3)}, str(path))
    return path


@pytest.fixture(scope="module")
def arch_checkpoint(tmp_path_factory):
    """A real pruned checkpoint of a 2-block variant of the reference model."""
    folder = tmp_path_factory.mktemp("arch")
    run_in_process("prune", *SHRUNK, "model.pretrained=false", "+model.kwargs.depth=2", "hydra.run.dir=arch", cwd=folder)
    return folder / "arch" / "pruned.safetensors"


@pytest.mark.parametrize("args,message", [
    (["run", "model=nope"], "unknown model 'nope'"),
    (["run", "model.name=vit_nope"], "unknown model 'vit_nope'"),
    (["run", "data.path=/does/not/exist"], "data.path"),
    (["run", "data.system_dir=null", "data.hub_id=null", "data.path=EMPTY"], "not found"),
    (["heal"], "no checkpoint"),
    (["heal", "pruned=/no/such.safetensors"], "no checkpoint at /no/such.safetensors"),
    (["heal", "pruned=TRUNCATED"], "truncated"),
    (["heal", "pruned=FOREIGN"], "not a starfish checkpoint"),
    pytest.param(["heal", "pruned=ARCH"], "different architecture", marks=pytest.mark.slow),
    (["bogus"], "unknown stage"),
    (["run", "compile=true", "healer.states=[attn]"], "compile=true"),
    (["run", "pruner.sparsty=0.5"], "unknown key 'pruner.sparsty': did you mean pruner.sparsity?"),
    (["run", "healer.lr=fast"], "healer.lr='fast' must be a number"),
    (["run", "healer.recipe=fast"], "healer.recipe='fast': choose one of reference, high, structured, extreme"),
    (["run", "pruner.sparsity=[0.5"], "cannot read the overrides"),
    (["run", "-m", "healer=none,kd"], "unknown key 'healer.epochs' (with healer=none)"),
    (["run", "device=tpu"], "device='tpu' is not a device"),
    (["run", "model.checkpoint_path=TRUNCATED"], "could not build model 'vit_fmnist'"),
    (["run", "model.data_config={means:[0.5]}"], "model.data_config has no key 'means'"),
    (["run", "data=imagefolder", "data.path=EMPTY"], "could not read image folders"),
    pytest.param(["run", "data=imagefolder", "data.path=BADIMAGES", "calib.count=2", "model=deit_tiny",
                  "model.pretrained=false"], "cannot be read", marks=pytest.mark.slow),
    (["run", "output_root=/proc/starfish"], "choose a writable output_root"),
    pytest.param(["heal", "pruned=ARCH", "model=deit_tiny", "model.pretrained=false"], "was made for model 'vit_fmnist'",
                 marks=pytest.mark.slow),
    (["report", "/no/such/folder"], "is not a folder"),
    (["run", "model=lm_reference", "pruner=structured", "pruner.scope=global"], "use pruner.scope=block"),
    (["run", "pruner=structured", "pruner.layers=2"], "the vision family cannot remove whole blocks"),
    (["run", "model=lm_reference", "pruner=structured", "pruner.layers=2.5"], "pruner.layers=2.5"),
    (["run", "model=lm_reference", "pruner=structured", "pruner.layers=4"], "removes 4 of the model's 4 blocks"),
    (["run", "model=lm_reference", "pruner=structured", "pruner.heads=0.25"], "choose pruner.heads in 0, 0.5, 0.75"),
])
def test_bad_input_is_one_line_exit_2_nothing_left(tmp_path, args, message, request):
    """The CLI's fuzz test: bad values of every config group and stage, typos, missing, corrupt or
    foreign files, a checkpoint of another model, empty or unreadable data, an output folder that
    cannot be made. (A read-only folder cannot be had as root, which CI is.)"""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "empty").mkdir()
    replacements = {"EMPTY": str(tmp_path / "empty"), "TRUNCATED": str(_bad_checkpoint(tmp_path, "truncated")),
                    "FOREIGN": str(_bad_checkpoint(tmp_path, "foreign")), "BADIMAGES": str(tmp_path / "bad")}
    for split in ("train", "val"):  # an image folder whose files are not images
        (tmp_path / "bad" / split / "n0").mkdir(parents=True)
        for i in range(4):
            (tmp_path / "bad" / split / "n0" / f"{i}.JPEG").write_bytes(b"not a jpeg")
    if "pruned=ARCH" in args:
        replacements["ARCH"] = str(request.getfixturevalue("arch_checkpoint"))
    args = [a.replace(k, v) if "=" in a else a for a in args for k, v in [next(
        ((k, v) for k, v in replacements.items() if k in a), ("", ""))]]
    shrunk = SHRUNK if args[0] in ("run", "prune", "heal", "eval") else []
    result = run_in_process(args[0], *shrunk, *args[1:], cwd=work, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("starfish: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "timm" not in result.stdout  # library chatter goes to the log file, not the console
    assert list(work.iterdir()) == [], "a failed run left files behind"


@pytest.mark.slow
def test_multirun_rerun_skips_finished_runs_and_report_summarizes(tmp_path):
    sweep = ["run", "-m", "healer=norm,starfish", "seed=0,1", *SHRUNK]
    run_in_process(*sweep, cwd=tmp_path)
    reports = sorted((tmp_path / "outputs").rglob("report.json"))
    assert len(reports) == 4
    stamps = [r.stat().st_mtime_ns for r in reports]
    again = run_in_process(*sweep, cwd=tmp_path)
    assert again.stderr.count("skipping") + again.stdout.count("skipping") == 4
    assert [r.stat().st_mtime_ns for r in reports] == stamps
    printed = run_cli("report", "outputs/default", cwd=tmp_path).stdout  # the subprocess test of `starfish report`
    for name in ("summary.md", "summary.csv", "accuracy_vs_sparsity.png"):
        assert (tmp_path / "outputs" / "default" / name).stat().st_size > 0, name
    assert "norm" in printed and "starfish" in printed
    summary = (tmp_path / "outputs" / "default" / "summary.md").read_text()
    assert "| wanda | unstructured | 0.75 |" in summary and "±" in summary
