"""Shared fixtures: the embedded reference model, small data slices, and CLI runners (in process and in a
subprocess)."""

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one torch thread each (and in the CLIs they start), not
    # two threads per worker contending for the same cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test reaches for the hub: tests that need Fashion-MNIST use the Debian package's files or skip. Set before
# huggingface_hub and datasets are imported (by the tests, through timm): they read these once, and runs in
# process use them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# torch, timm and the package are imported by the fixtures that use them, not here: xdist's controller, which
# runs no test, then starts in a fraction of a second instead of importing them too
from starfish_cli.stages.resolvers import register as register_resolvers  # noqa: E402

register_resolvers()  # configs composed in process resolve as the CLI's do (the healer's recipe)

FMNIST_AVAILABLE = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists()
needs_fmnist = pytest.mark.skipif(not FMNIST_AVAILABLE,
                                  reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def reference_model():
    import timm

    import starfish_cli.models  # noqa: F401  (registers vit_fmnist with timm)

    return timm.create_model("vit_fmnist", pretrained=True).eval()


@pytest.fixture(scope="session")
def fmnist():
    if not FMNIST_AVAILABLE:
        pytest.skip("Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
    from starfish_cli.data import DATASETS

    return DATASETS.build({"name": "fashion_mnist", "hub_id": None})


@pytest.fixture(scope="session")
def calibration_images(reference_model, fmnist):
    """64 unlabeled training images as an (index, image) dataset."""
    from starfish_cli.data.images import ImageTensors
    from starfish_cli.models.vision import model_transform

    split = fmnist.load("train").select(range(64)).remove_columns("label")
    return ImageTensors(split, model_transform(reference_model), channels=1)


@pytest.fixture(scope="session")
def test_images(reference_model, fmnist):
    from starfish_cli.data.images import ImageTensors
    from starfish_cli.models.vision import model_transform

    split = fmnist.load("test").select(range(256))
    return ImageTensors(split, model_transform(reference_model), channels=1, with_labels=True)


@pytest.fixture(scope="session")
def calibration_batches(calibration_images):
    import torch

    return [torch.stack([calibration_images[i][1] for i in range(j, j + 32)]) for j in (0, 32)]


# Small sizes for CLI runs: the whole pipeline in seconds.
SHRUNK = ["calib.count=32", "healer.epochs=1", "healer.batch_size=32",  # one healing step, whatever the recipe
          "eval.max_images=256", "eval.batch_size=128", "eval.speed=false"]


def run_cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "starfish_cli", *args], cwd=cwd, capture_output=True,
                            text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"starfish {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def run_in_process(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`starfish ARGS` run by `starfish_cli.cli.main` in this process, in `cwd`: what `run_cli` gives without
    the new interpreter (importing torch, timm and datasets again costs seconds a call). Whatever the CLI
    changes for the process is put back afterwards: Hydra's global state, the working folder, argv, the
    environment, the root logger's handlers (Hydra's logging config replaces them) and torch's determinism."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from starfish_cli.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = (Path.cwd(), list(sys.argv), os.environ.get("HYDRA_FULL_ERROR"))
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    stdout, stderr = io.StringIO(), io.StringIO()
    GlobalHydra.instance().clear()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as exited:  # Hydra exits by itself on some errors
                code = exited.code if isinstance(exited.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        os.chdir(saved[0])
        sys.argv = saved[1]
        if saved[2] is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved[2]
        for handler in root.handlers:  # the run's console and run.log handlers
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    result = subprocess.CompletedProcess(["starfish", *args], code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        raise AssertionError(f"starfish {' '.join(args)} exited {code}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(autouse=True)
def no_log_handlers_left_behind():
    """A test that calls the CLI's `main` itself (not through `run_in_process`) leaves Hydra's handlers on the root
    logger: run.log in a folder that is deleted, a console stream that is closed. Every later test in the worker
    that logs would fail on them, so they go when the test ends (pytest's own capture handlers stay)."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in before and not type(h).__module__.startswith("_pytest")]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


SLOW_FIXTURES = {"runs"}  # fixtures that run whole stages (test_export.py): every test using one is slow


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# run in a fresh Python in which `import starfish_cli` fails: the folder must load without it
PLAIN = """
import sys
sys.modules["starfish_cli"] = None
import torch
folder, expected = sys.argv[1], torch.load(sys.argv[2])
{load}
with torch.no_grad():
    got = {outputs}
assert not any(name.startswith("starfish_cli") for name in sys.modules if sys.modules[name] is not None)
print(float((got - expected["outputs"]).abs().max()))
"""


def outputs_in_plain_python(load: str, outputs: str, folder, inputs, expected, tmp_path) -> float:
    """The largest difference between `expected` and what the folder's model, loaded without starfish,
    gives for `inputs`."""
    import torch

    torch.save({"inputs": inputs, "outputs": expected}, tmp_path / "expected.pt")
    script = PLAIN.format(load=load, outputs=outputs)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "expected.pt")],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.strip().splitlines()[-1])


def parsed_card(folder):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")
