"""The ImageNet configs against local stand-ins: the hub call is mocked, nothing else."""

import datasets
import pytest
from PIL import Image

from conftest import read_json, run_in_process
from starfish_cli.data.calibration import CalibrationSampler
from starfish_cli.data import DATASETS
from starfish_cli.runtime.errors import StarfishError

pytestmark = pytest.mark.slow  # whole stages, in process

TINY_DEIT = ["model=deit_tiny", "model.pretrained=false", "+model.kwargs.img_size=64", "+model.kwargs.num_classes=4",
             "calib.count=8", "healer.epochs=1", "healer.batch_size=4", "eval.batch_size=4", "eval.speed=false",
             "device=cpu"]


def write_image_folders(root, splits=("train", "val"), classes=4, per_class=3):
    for split in splits:
        for label in range(classes):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (72, 80), (40 * label, 20 * i, 100)).save(folder / f"{i}.JPEG")
    return root


@pytest.fixture()
def hub_stand_in(tmp_path, monkeypatch):
    """`load_dataset("ILSVRC/imagenet-1k", streaming=True)` answered from local folders."""
    local = datasets.load_dataset("imagefolder", data_dir=str(write_image_folders(tmp_path / "hub",
                                                                                   ("train", "validation", "test"))))
    test = local["test"].map(lambda row: {"label": -1})  # the real test split is unlabeled
    splits = {"train": local["train"], "validation": local["validation"], "test": test}
    calls = []

    def fake_load_dataset(name, split=None, streaming=False, **kwargs):
        calls.append((name, split, streaming))
        if name != "ILSVRC/imagenet-1k":
            raise AssertionError(f"unexpected dataset {name}")
        return splits[split].to_iterable_dataset() if streaming else splits[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_streamed_calibration_is_unlabeled_and_seeded(hub_stand_in):
    source = DATASETS.build({"name": "imagenet_hf", "shuffle_buffer": 4})
    first, positions, balanced = source.calibration_split(CalibrationSampler(count=5), seed=0)
    again, _, _ = source.calibration_split(CalibrationSampler(count=5), seed=0)
    assert len(first) == 5 and not balanced and set(first["label"]) == {-1}
    assert [a.tobytes() for a in first["image"]] == [b.tobytes() for b in again["image"]]
    assert ("ILSVRC/imagenet-1k", "test", True) in hub_stand_in


def test_imagenet_hf_config_end_to_end(tmp_path, hub_stand_in):
    run_in_process("run", "data=imagenet_hf", *TINY_DEIT, "eval.max_images=6", "hydra.run.dir=hf", cwd=tmp_path)
    report = read_json(tmp_path / "hf" / "report.json")
    assert report["calibration"]["count"] == 8 and report["calibration"]["source"] == "imagenet_hf/test"
    assert report["accuracy"]["images"] == 6 and report["accuracy"]["split"] == "imagenet_hf/validation"
    assert ("ILSVRC/imagenet-1k", "validation", True) in hub_stand_in


def test_gated_dataset_says_log_in(monkeypatch):
    def gated(*args, **kwargs):
        raise ConnectionError("Dataset 'ILSVRC/imagenet-1k' is a gated dataset on the Hub. You must be authenticated")

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(StarfishError, match="huggingface-cli login"):
        DATASETS.build({"name": "imagenet_hf"}).load("validation")


def test_deit_tiny_on_a_local_image_folder(tmp_path):
    root = write_image_folders(tmp_path / "imagenet")
    run_in_process("run", "data=imagenet_folder", f"data.path={root}", *TINY_DEIT, "hydra.run.dir=folder", cwd=tmp_path)
    report = read_json(tmp_path / "folder" / "report.json")
    assert report["model"]["name"] == "deit_tiny_patch16_224" and report["accuracy"]["images"] == 12
    assert report["sparsity"]["prunable"] == pytest.approx(0.75, abs=1e-3) and report["healing"]["steps"] == 2
