"""Image datasets as `datasets.Dataset` splits (columns `image`, optional `label`) and timm preprocessing."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch
from timm.data.transforms import MaybeToTensor
from torchvision.transforms import Compose, Normalize, ToTensor
from torchvision.transforms.functional import pil_to_tensor

from starfish_cli.data import fashion_mnist
from starfish_cli.data.calibration import CalibrationSampler
from starfish_cli.runtime.errors import StarfishError, first_line
from starfish_cli.data.registry import DATASETS


class ImageSource:
    """A named image dataset with a split for calibration and a split for evaluation; it makes a vision
    model's items with the model's `transform` (PIL image → tensor) and input `channels`."""

    registered_name = "?"
    modality = "images"

    def __init__(self, calib_split: str, eval_split: str):
        self.calib_split = calib_split
        self.eval_split = eval_split

    def load(self, split: str) -> datasets.Dataset:
        raise NotImplementedError

    def describe(self, split: str) -> str:
        return f"{self.registered_name}/{split}"

    def calibration_split(self, sampler: CalibrationSampler, seed: int) -> tuple[datasets.Dataset, list[int], bool]:
        """(the sampled images, their indices in the split, whether the draw was class-balanced)."""
        split = self.load(self.calib_split)
        # one arrow read of the column: a Dataset's column iterates row by row (seconds at 60k rows)
        labels = (split.select_columns(["label"]).with_format("numpy")[:]["label"]
                  if "label" in split.column_names else None)
        if labels is not None and len(labels) and labels.min() < 0:
            labels = None  # an unlabeled split (label -1), like ImageNet's test split
        indices = sampler.sample(len(split), labels, seed)
        return split.select(indices), indices, bool(sampler.balanced and labels is not None)

    def evaluation_split(self, max_images: int | None) -> datasets.Dataset | datasets.IterableDataset:
        return self._first(self.load(self.eval_split), max_images)

    def calibration_items(self, sampler: CalibrationSampler, seed: int, labels_for: str | None, transform: Callable,
                          channels: int) -> tuple[torch.utils.data.Dataset, list[int], dict[str, Any]]:
        """(items `(index, image)` — `(index, image, label)` for the healer named by `labels_for` —, the
        sampled positions in the split, what the report says of them), decoded once for every epoch."""
        subset, indices, balanced = self.calibration_split(sampler, seed=seed)  # the images stay encoded here
        if labels_for and "label" not in subset.column_names:
            raise StarfishError(f"healer={labels_for} needs labels, and "
                                f"{self.describe(self.calib_split)} has none: choose a labelled split")
        if "label" in subset.column_names and not labels_for:
            subset = subset.remove_columns("label")  # healing never sees labels
        items = DecodedImages(subset, transform, channels, with_labels=bool(labels_for))
        return items, indices, {"balanced": balanced}

    def evaluation_items(self, max_items: int | None, transform: Callable, channels: int
                         ) -> tuple[torch.utils.data.Dataset, Callable | None]:
        """(items `(index, pixels, label)`, `finish`: a batch of pixels → the model's inputs, or None)."""
        return evaluation_pixels(self.evaluation_split(max_items), transform, channels)

    def _first(self, split, max_images: int | None):
        """The first `max_images` of a loaded, labelled evaluation split."""
        if "label" not in split.column_names:
            raise StarfishError(f"{self.describe(self.eval_split)} has no labels: set data.eval_split to a labelled split")
        return split.select(range(min(int(max_images), len(split)))) if max_images else split


@DATASETS.register("fashion_mnist")
class FashionMNIST(ImageSource):
    """Fashion-MNIST from `path`, else `system_dir`, else the hub; null disables a place."""

    def __init__(
        self,
        path: str | None = None,
        system_dir: str | None = str(fashion_mnist.SYSTEM_DIR),
        hub_id: str | None = fashion_mnist.HUB_ID,
        calib_split: str = "train",
        eval_split: str = "test",
    ):
        super().__init__(calib_split, eval_split)
        if path is not None and not Path(path).expanduser().is_dir():
            raise StarfishError(f"data.path={path!r} is not a folder: give the folder holding the Fashion-MNIST IDX files")
        self.path, self.system_dir, self.hub_id = path, system_dir, hub_id

    def load(self, split: str) -> datasets.Dataset:
        if split not in fashion_mnist.IDX_FILES:
            raise StarfishError(f"Fashion-MNIST has no split {split!r}: use train or test")
        for directory in (self.path, self.system_dir):
            if directory and fashion_mnist.idx_paths(Path(directory).expanduser(), split):
                return _fashion_mnist_from_idx(Path(directory).expanduser(), split)
        hub_problem = "disabled (data.hub_id=null)"
        if self.hub_id:
            try:
                return datasets.load_dataset(self.hub_id, split=split)
            except Exception as error:  # the hub raises many types: offline, gated, missing
                hub_problem = f"failed: {first_line(error, 120)}"
        raise StarfishError(
            f"Fashion-MNIST {split} split not found: data.path={self.path!r} has no IDX files; "
            f"{self.system_dir or 'no system folder'} has none (apt-get install dataset-fashion-mnist); "
            f"hub {self.hub_id or ''} {hub_problem}"
        )


def _fashion_mnist_generator(images_path: str, labels_path: str, stamp: str):
    from PIL import Image

    images, labels = fashion_mnist.read_idx(Path(images_path)), fashion_mnist.read_idx(Path(labels_path))
    for image, label in zip(images, labels, strict=True):
        yield {"image": Image.fromarray(image, mode="L"), "label": int(label)}


def _fashion_mnist_from_idx(directory: Path, split: str) -> datasets.Dataset:
    images_path, labels_path = fashion_mnist.idx_paths(directory, split)
    # the stamp keys the datasets cache to these exact files
    stamp = ";".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (images_path, labels_path))
    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=fashion_mnist.CLASS_NAMES),
    })
    datasets.disable_progress_bars()  # a one-off conversion; the bar is noise in every log
    try:
        return datasets.Dataset.from_generator(
            _fashion_mnist_generator,
            features=features,
            gen_kwargs={"images_path": str(images_path), "labels_path": str(labels_path), "stamp": stamp},
            split=datasets.Split(split),
        )
    except Exception as error:
        if isinstance(error.__cause__, ValueError) or isinstance(error, ValueError):
            raise StarfishError(f"Fashion-MNIST IDX files in {directory} are damaged ({error.__cause__ or error}): "
                                "reinstall them") from error
        raise
    finally:
        datasets.enable_progress_bars()


@DATASETS.register("imagefolder")
class ImageFolder(ImageSource):
    """A local folder of class sub-folders per split (train/, val/ …), read by `datasets`' imagefolder."""

    def __init__(self, path: str | None = None, calib_split: str = "train", eval_split: str = "validation"):
        super().__init__(calib_split, eval_split)
        if not path or not Path(path).expanduser().is_dir():
            raise StarfishError(f"data.path={path!r} is not a folder: give a folder with train/ and val/ class folders")
        self.path = str(Path(path).expanduser())

    def load(self, split: str) -> datasets.Dataset:
        datasets.disable_progress_bars()  # indexing the folder once: its bars are noise on the console
        try:
            splits = datasets.load_dataset("imagefolder", data_dir=self.path)
        except Exception as error:
            raise StarfishError(f"could not read image folders under {self.path}: {first_line(error, 150)}") from error
        finally:
            datasets.enable_progress_bars()
        if split not in splits:
            raise StarfishError(f"{self.path} has no {split!r} split (found {', '.join(splits)}): "
                                "set data.calib_split / data.eval_split")
        return splits[split]


@DATASETS.register("imagenet_hf")
class ImageNetHF(ImageSource):
    """ImageNet-1k from the HF hub, streamed: nothing is downloaded whole.

    Calibration comes from the unlabeled `test` split by default (as the reference code does),
    or class-balanced from `train`; evaluation runs on `validation`.
    """

    def __init__(self, hub_id: str = "ILSVRC/imagenet-1k", calib_split: str = "test",
                 eval_split: str = "validation", streaming: bool = True, shuffle_buffer: int = 10_000):
        super().__init__(calib_split, eval_split)
        self.hub_id, self.streaming, self.shuffle_buffer = hub_id, streaming, shuffle_buffer

    def load(self, split: str):
        try:
            return datasets.load_dataset(self.hub_id, split=split, streaming=self.streaming)
        except Exception as error:
            text = first_line(error, 160)
            if any(word in text.lower() for word in ("gated", "authenticated", "401", "403", "access")):
                raise StarfishError(f"{self.hub_id} is gated: accept its terms on huggingface.co, then "
                                    "`huggingface-cli login` (or set HF_TOKEN)") from error
            raise StarfishError(f"could not open {self.hub_id} split {split!r} ({text}): check network access "
                                "and `huggingface-cli login`, or use data=imagenet_folder") from error

    def calibration_split(self, sampler, seed):
        if not self.streaming:
            return super().calibration_split(sampler, seed)
        stream = self.load(self.calib_split).shuffle(seed=seed, buffer_size=self.shuffle_buffer)
        count = sampler.size(self.load_size(self.calib_split))
        rows, positions, per_class = [], [], {}
        balanced = sampler.balanced
        quota = -(-count // 1000)  # ImageNet-1k: ceil(count / classes) per class
        for position, row in enumerate(stream):
            label = row.get("label", -1)
            if balanced and label is not None and label >= 0:
                if per_class.get(label, 0) >= quota:
                    continue
                per_class[label] = per_class.get(label, 0) + 1
            rows.append(row)
            positions.append(position)
            if len(rows) == count:
                break
        if len(rows) < count:
            raise StarfishError(f"{self.hub_id}/{self.calib_split} yielded only {len(rows)} images: lower calib.count")
        subset = datasets.Dataset.from_list(rows, features=stream.features)
        return subset, positions, bool(per_class)  # balanced only where the split had labels

    def load_size(self, split: str) -> int:
        """Split sizes of ImageNet-1k on the hub (a stream has no length)."""
        return {"train": 1_281_167, "validation": 50_000, "test": 100_000}.get(split, 100_000)

    def evaluation_split(self, max_images):
        split = self.load(self.eval_split)  # once: a second load would open the split again
        if not self.streaming:
            return self._first(split, max_images)
        return split.take(int(max_images)) if max_images else split


class ImageTensors(torch.utils.data.Dataset):
    """Items `(index, image tensor)` or `(index, image tensor, label)` from a `datasets` split."""

    def __init__(self, split: datasets.Dataset, transform: Callable, channels: int, with_labels: bool = False):
        if with_labels and "label" not in split.column_names:
            raise StarfishError("this split has no labels: choose a labelled split")
        self.split = split
        self.transform = transform
        self.mode = "L" if channels == 1 else "RGB"
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        try:
            row = self.split[int(index)]
            image = self.transform(row["image"].convert(self.mode))
        except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for files that are not images
            raise StarfishError(f"image {index} of the split cannot be read ({first_line(error, 150)}): "
                                "remove or replace the damaged file") from error
        return (index, image, row["label"]) if self.with_labels else (index, image)


def split_at_tensor(transform: Callable) -> tuple[Callable, Callable | None]:
    """(`to_pixels`, `finish`): timm's eval transform ends with ToTensor + Normalize; `to_pixels` is
    everything before them (decode, resize, crop → PIL image) and `finish` turns the uint8 pixels into
    exactly what the whole transform gives. (`transform`, None) when it has another shape."""
    steps = list(getattr(transform, "transforms", []))
    if len(steps) >= 2 and isinstance(steps[-2], MaybeToTensor | ToTensor) and isinstance(steps[-1], Normalize):
        normalize = steps[-1]
        # as ToTensor on a PIL image: float in [0, 1] by division by 255, then Normalize
        return Compose(steps[:-2]), lambda pixels: normalize(pixels.to(torch.get_default_dtype()).div(255))
    return transform, None


class DecodedImages(torch.utils.data.Dataset):
    """A small split (the calibration set) decoded and preprocessed once, so that every epoch reads
    tensors. Stored as uint8 pixels when the transform allows it (a quarter of the memory of floats,
    and bit-identical to preprocessing every time), else as the transform's output."""

    def __init__(self, split: datasets.Dataset, transform: Callable, channels: int, with_labels: bool = False):
        to_pixels, self.finish = split_at_tensor(transform)
        source = ImageTensors(split, to_pixels, channels, with_labels)
        images, labels = [], []
        for index in range(len(source)):
            item = source[index]
            images.append(pil_to_tensor(item[1]) if self.finish is not None else item[1])
            labels.append(item[2] if with_labels else None)
        self.images = torch.stack(images) if images else torch.empty(0)
        self.labels = labels if with_labels else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index] if self.finish is None else self.finish(self.images[index])
        return (index, image) if self.labels is None else (index, image, self.labels[index])


class StreamedImageTensors(torch.utils.data.IterableDataset):
    """Items `(index, image tensor, label)` from a streamed `datasets.IterableDataset`."""

    def __init__(self, stream: datasets.IterableDataset, transform: Callable, channels: int):
        self.stream, self.transform = stream, transform
        self.mode = "L" if channels == 1 else "RGB"

    def shard_for(self, rank: int, world_size: int) -> "StreamedImageTensors":
        from datasets.distributed import split_dataset_by_node

        return StreamedImageTensors(split_dataset_by_node(self.stream, rank, world_size), self.transform,
                                    1 if self.mode == "L" else 3)

    def __iter__(self):
        for index, row in enumerate(self.stream):
            yield index, self.transform(row["image"].convert(self.mode)), row["label"]


def evaluation_tensors(split, transform: Callable, channels: int) -> torch.utils.data.Dataset:
    if isinstance(split, datasets.IterableDataset):
        return StreamedImageTensors(split, transform, channels)
    return ImageTensors(split, transform, channels, with_labels=True)


def evaluation_pixels(split, transform: Callable, channels: int) -> tuple[torch.utils.data.Dataset, Callable | None]:
    """The evaluation split as uint8 pixels, and `finish`, which turns a batch of them into exactly
    what `transform` gives: a quarter of the bytes go through the loader (and to the GPU), and the
    batch becomes floats only where it is used. (float tensors, None) for a transform of another shape."""
    to_pixels, finish = split_at_tensor(transform)
    if finish is not None:
        to_pixels = Compose([to_pixels, pil_to_tensor])
    return evaluation_tensors(split, to_pixels, channels), finish
