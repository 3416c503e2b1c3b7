import gzip

import numpy as np
import pytest
from PIL import Image

from conftest import needs_fmnist
from starfish_cli.data import DATASETS
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.data.fashion_mnist import read_idx


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder, n=20):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)


def test_read_idx_roundtrip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), array)


def test_configured_path_comes_first(tmp_path):
    fake_fashion_mnist(tmp_path)
    split = DATASETS.build({"name": "fashion_mnist", "path": str(tmp_path)}).load("train")
    assert len(split) == 20 and split.features["label"].names[0] == "T-shirt/top"
    assert isinstance(split[0]["image"], Image.Image) and split[0]["label"] == 0


@needs_fmnist
def test_system_folder_is_found():
    assert len(DATASETS.build({"name": "fashion_mnist"}).load("test")) == 10_000


def test_nothing_found_names_all_three_places(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    source = DATASETS.build({"name": "fashion_mnist", "path": str(tmp_path), "system_dir": str(tmp_path / "none")})
    with pytest.raises(StarfishError) as error:
        source.load("train")
    message = str(error.value)
    assert "data.path" in message and "dataset-fashion-mnist" in message and "zalando-datasets/fashion_mnist" in message
    assert "\n" not in message


def test_hub_is_the_last_resort(tmp_path, monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: calls.append((name, split)) or "hub-split")
    source = DATASETS.build({"name": "fashion_mnist", "system_dir": str(tmp_path)})
    assert source.load("test") == "hub-split" and calls == [("zalando-datasets/fashion_mnist", "test")]


def test_truncated_idx_is_a_clear_error(tmp_path):
    fake_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    with gzip.open(path, "wb") as handle:
        handle.write(data[:100])
    with pytest.raises(StarfishError, match="damaged"):
        DATASETS.build({"name": "fashion_mnist", "path": str(tmp_path), "system_dir": None, "hub_id": None}).load("test")


def test_imagefolder_reads_class_folders(tmp_path):
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / split / label / f"{i}.png")
    source = DATASETS.build({"name": "imagefolder", "path": str(tmp_path)})
    validation = source.load("validation")
    assert len(validation) == 6 and set(validation["label"]) == {0, 1}


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(StarfishError, match="not a folder"):
        DATASETS.build({"name": "imagefolder", "path": str(tmp_path / "missing")})


def test_loader_order_fixed_or_new_each_epoch():
    import torch

    from starfish_cli.data.loader import loader

    items = torch.utils.data.TensorDataset(torch.arange(40))

    def epochs(**options):
        batches = loader(items, 8, shuffle=True, seed=3, **options)
        return [torch.cat([b[0] for b in batches]).tolist() for _ in range(2)]

    fixed_first, fixed_second = epochs(reshuffle=False)
    assert fixed_first == fixed_second != list(range(40))  # shuffled once, then repeated
    assert sorted(fixed_first) == list(range(40))
    new_first, new_second = epochs(reshuffle=True)
    assert new_first != new_second and sorted(new_second) == list(range(40))
    assert epochs(reshuffle=False) == [fixed_first, fixed_second]  # seeded


def test_batches_are_pinned_only_for_a_gpu():
    import torch

    from starfish_cli.data.loader import loader

    data = torch.utils.data.TensorDataset(torch.zeros(4, 2))
    assert not loader(data, 2).pin_memory and not loader(data, 2, device=torch.device("cpu")).pin_memory
    assert loader(data, 2, device=torch.device("cuda")).pin_memory


@needs_fmnist
def test_calibration_is_decoded_once_and_gives_the_same_tensors(reference_model, fmnist):
    """A heal of several epochs (and the pruning pass) read decoded pixels: each image is decoded and resized
    once, and what the healer sees is bit-identical to preprocessing every time."""
    import copy

    import torch

    from starfish_cli.data.images import DecodedImages, ImageTensors
    from starfish_cli.models.vision import model_transform
    from starfish_cli.healing import HEALERS
    from starfish_cli.pruning import PRUNERS

    split = fmnist.load("train").select(range(24)).remove_columns("label")
    transform = model_transform(reference_model)
    decodes = []
    first_step = transform.transforms[0]
    transform.transforms[0] = lambda image: decodes.append(1) or first_step(image)
    decoded = DecodedImages(split, transform, channels=1)
    assert len(decodes) == 24 and decoded.images.dtype == torch.uint8
    fresh = ImageTensors(split, model_transform(reference_model), channels=1)
    assert all(torch.equal(decoded[i][1], fresh[i][1]) for i in range(24))
    student = copy.deepcopy(reference_model)
    masks = PRUNERS.build({"name": "magnitude", "sparsity": 0.5}).prune(student)
    HEALERS.build({"name": "starfish", "epochs": 2, "batch_size": 8}).heal(
        student, reference_model, masks, decoded, torch.device("cpu"))
    assert len(decodes) == 24  # every image read again, 6 steps later: still one decode per image


def test_a_transform_without_tensor_conversion_is_stored_as_its_output():
    import datasets
    import torch
    from PIL import Image

    from starfish_cli.data.images import DecodedImages

    split = datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4), 7)] * 3},
                                       features=datasets.Features({"image": datasets.Image()}))
    decoded = DecodedImages(split, lambda image: torch.full((1, 2, 2), float(image.getpixel((0, 0)))), channels=1)
    assert decoded.finish is None and torch.equal(decoded[2][1], torch.full((1, 2, 2), 7.0))
