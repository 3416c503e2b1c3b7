"""ONNX export of a model, checked in onnxruntime against PyTorch on the same images."""

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from starfish_cli.runtime.atomic import write_atomically
from starfish_cli.data.loader import loader
from starfish_cli.runtime.errors import StarfishError, first_line

OPSET = 17
TOP1_TOLERANCE = 0.05  # points of top-1 between onnxruntime and PyTorch


def require_onnx() -> None:
    """onnx and onnxruntime are an optional extra: without them, one line that says how to get them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise StarfishError(f"export.format=onnx needs onnx and onnxruntime ({error.name or error} is missing): "
                            "pip install 'starfish-cli[deploy]'") from error


def export_onnx(model: nn.Module, path: Path, input_size: tuple[int, ...]) -> None:
    """`model` (float32, CPU) as ONNX with a dynamic batch axis: input `images`, output `logits`."""
    example = torch.zeros(2, *input_size)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the tracer's notes on timm's shape checks, the exporter's deprecation
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})

    try:
        write_atomically(Path(path), write)
    except Exception as error:  # noqa: BLE001  (the exporter raises anything from anywhere in the model)
        text = " ".join(str(error).split())[:200] or type(error).__name__
        raise StarfishError(f"torch.onnx.export could not export {type(model).__name__} ({text}): "
                            "use export.format=safetensors") from error


@torch.inference_mode()
def compare_with_pytorch(path: Path, model: nn.Module, dataset, batch_size: int) -> dict[str, Any]:
    """Top-1 and images/s of the ONNX file in onnxruntime and of `model` in PyTorch, both on the CPU
    in this process, on the same labelled batches; an error when the top-1s differ by more than
    TOP1_TOLERANCE points."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001  (onnxruntime's own exception types)
        raise StarfishError(f"onnxruntime cannot load {path} ({first_line(error)})") from error
    model = model.float().cpu().eval()
    correct = {"pytorch": 0, "onnxruntime": 0}
    seconds = {"pytorch": 0.0, "onnxruntime": 0.0}
    seen = agree = 0
    largest_difference = 0.0
    for number, (_indices, images, labels) in enumerate(loader(dataset, batch_size)):
        images = images.float()
        if number == 0:  # first calls allocate: not part of the throughput
            model(images)
            session.run(None, {"images": images.numpy()})
        started = time.perf_counter()
        torch_logits = model(images)
        seconds["pytorch"] += time.perf_counter() - started
        started = time.perf_counter()
        ort_logits = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
        seconds["onnxruntime"] += time.perf_counter() - started
        correct["pytorch"] += int((torch_logits.argmax(-1) == labels).sum())
        correct["onnxruntime"] += int((ort_logits.argmax(-1) == labels).sum())
        agree += int((torch_logits.argmax(-1) == ort_logits.argmax(-1)).sum())
        largest_difference = max(largest_difference, float((torch_logits - ort_logits).abs().max()))
        seen += len(labels)
    if seen == 0:
        raise StarfishError("the evaluation split gave no images: check data.eval_split and eval.max_images")
    result = {
        "images": seen,
        "top1_pytorch": 100.0 * correct["pytorch"] / seen,
        "top1_onnxruntime": 100.0 * correct["onnxruntime"] / seen,
        "agreement": 100.0 * agree / seen,
        "max_abs_logit_difference": largest_difference,
        "images_per_second_pytorch": seen / max(seconds["pytorch"], 1e-9),
        "images_per_second_onnxruntime": seen / max(seconds["onnxruntime"], 1e-9),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "opset": OPSET,
    }
    if abs(result["top1_onnxruntime"] - result["top1_pytorch"]) > TOP1_TOLERANCE:
        raise StarfishError(f"{path.name} disagrees with PyTorch: top-1 {result['top1_onnxruntime']:.2f}% in "
                            f"onnxruntime vs {result['top1_pytorch']:.2f}% on {seen} images")
    return result
