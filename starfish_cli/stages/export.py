"""The `export` stage: the healed checkpoint of a run folder → export/ (model.safetensors, model.json,
with export.format=onnx also model.onnx checked in onnxruntime), or with export.format=hf → hf/ (the
library's own folder and a model card, uploaded with export.push_to_hub), and an `export` section in the report."""

import json
import logging
from pathlib import Path
from typing import Any

import timm
from omegaconf import DictConfig

from starfish_cli.runtime.atomic import write_folder_atomically, write_text_atomically
from starfish_cli.artifacts.checkpoint import Checkpoint, load_checkpoint, restore
from starfish_cli.data import DATASETS
from starfish_cli.data.images import evaluation_tensors
from starfish_cli.artifacts.export import (
    DTYPES, EXPORT_DIR, MANIFEST_FILE, MODEL_FILE, ONNX_FILE, byte_counts, compress, manifest, safetensors_bytes,
    write_export,
)
from starfish_cli.artifacts.hf import HF_DIR, model_card, push_folder, refuse_structured, write_hub_folder
from starfish_cli.artifacts.load import rebuild
from starfish_cli.models import family_of, structure_of
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.reporting.report import read_report, write_report
from starfish_cli.stages.layout import RunFolders, healed_checkpoint
from starfish_cli.stages.settings import check_settings, plain

log = logging.getLogger("starfish")
HEADLINE_METRICS = ("top1", "top5", "perplexity")  # what model.json quotes of the report, where the family has it
REPORT_KEYS = ("seed", "pruner", "sparsity", "calibration", "healer")  # a report made here, when the folder has none


def export_run(cfg: DictConfig, folders: RunFolders) -> dict[str, Any]:
    """Write the run folder's export (export/, or hf/ for export.format=hf); bad input is a StarfishError
    before anything is written."""
    check_settings(cfg)
    path = Path(cfg.healed) if cfg.healed else healed_checkpoint(folders.run_dir)
    checkpoint = load_checkpoint(path, "heal")
    if cfg.export.format == "hf":
        return export_hub_folder(cfg, folders, checkpoint, path)
    return export_compressed(cfg, folders, checkpoint, path)


def _check_onnx(metadata: dict[str, Any]) -> None:
    from starfish_cli.artifacts.onnx import require_onnx

    family = family_of(metadata["model"])
    if not family.exports_onnx:
        raise StarfishError(f"export.format=onnx traces image classifiers; this is a {family.family} model: "
                            "use export.format=safetensors")
    require_onnx()


def export_compressed(cfg: DictConfig, folders: RunFolders, checkpoint: Checkpoint, path: Path) -> dict[str, Any]:
    """export/: starfish's compressed model.safetensors and model.json (with format=onnx, model.onnx checked
    in onnxruntime on the evaluation images)."""
    dtype, onnx, metadata = str(cfg.export.dtype), cfg.export.format == "onnx", checkpoint.metadata
    if onnx:
        _check_onnx(metadata)
    structure = metadata.get("structure")
    full_size = rebuild(metadata["model"])
    dense_bytes = safetensors_bytes(full_size.state_dict())  # the dense model's own file
    model = rebuild(metadata["model"], structure) if structure else full_size
    restore(model, Checkpoint(checkpoint.weights, {}, metadata), path)
    compressed = compress(checkpoint.weights, checkpoint.masks, metadata.get("pruner", {}).get("pattern", "unstructured"),
                          DTYPES[dtype])
    header = {"model": metadata["model"], **structure_of(model).recorded(), "structure": structure, "dtype": dtype}
    eval_set = None
    if onnx:  # the images are read before anything is written
        data = DATASETS.build(plain(cfg.data))
        eval_set = evaluation_tensors(data.evaluation_split(cfg.eval.max_images), **structure_of(model).preprocessing())
    report = _run_report(folders, metadata)
    section: dict[str, Any] = {}

    def fill(folder: Path) -> None:
        write_export(folder / MODEL_FILE, compressed, header)
        onnx_result = None
        if onnx:
            from starfish_cli.artifacts.onnx import compare_with_pytorch, export_onnx

            input_size = tuple(timm.data.resolve_data_config(model=model)["input_size"])
            export_onnx(model, folder / ONNX_FILE, input_size)
            onnx_result = compare_with_pytorch(folder / ONNX_FILE, model, eval_set, int(cfg.eval.batch_size))
        files = {file.name: file.stat().st_size for file in sorted(folder.iterdir()) if not file.name.startswith(".")}
        sizes = {"export_bytes": files[MODEL_FILE], "dense_bytes": dense_bytes,
                 "ratio": files[MODEL_FILE] / dense_bytes, "data_bytes": byte_counts(compressed),
                 "compressed_matrices": len(compressed.layouts),
                 "layouts": sorted({layout["layout"] for layout in compressed.layouts.values()})}
        described = manifest(metadata, header, files, sizes, _accuracy(report), onnx_result)
        write_text_atomically(folder / MANIFEST_FILE, json.dumps(described, indent=2) + "\n")
        section.update({"folder": EXPORT_DIR, "format": str(cfg.export.format), "dtype": dtype,
                        "files": files, **sizes, **({"onnx": onnx_result} if onnx_result else {})})

    write_folder_atomically(folders.run_dir / EXPORT_DIR, fill)
    hub = {"hf": report["export"]["hf"]} if "hf" in report.get("export", {}) else {}  # hf/ stays as it was
    write_report(folders.run_dir, {**report, "export": {**section, **hub}})
    _log_export(folders, section, dense_bytes)
    return section


def _log_export(folders: RunFolders, section: dict[str, Any], dense_bytes: int) -> None:
    log.info("exported %s: %s of %d bytes = %.3f × the dense model's %d bytes", folders.run_dir / EXPORT_DIR,
             MODEL_FILE, section["export_bytes"], section["ratio"], dense_bytes)
    if "onnx" in section:
        result = section["onnx"]
        log.info("%s: top-1 %.2f%% in onnxruntime vs %.2f%% in PyTorch on %d images; %.0f vs %.0f images/s",
                 ONNX_FILE, result["top1_onnxruntime"], result["top1_pytorch"], result["images"],
                 result["images_per_second_onnxruntime"], result["images_per_second_pytorch"])


def _accuracy(report: dict[str, Any]) -> dict[str, Any] | None:
    """The report's headline metrics of the dense and the healed model (top-1/top-5, or perplexity and
    next-token top-1), and the recovery; None before `eval`."""
    accuracy = report.get("accuracy")
    if not accuracy:
        return None
    models = {name: {key: accuracy[name][key] for key in HEADLINE_METRICS if key in accuracy[name]}
              for name in ("dense", "healed") if name in accuracy}
    return {"split": accuracy.get("split"), "images": accuracy.get("images"), **models,
            "recovery": report.get("recovery")}


def export_hub_folder(cfg: DictConfig, folders: RunFolders, checkpoint: Checkpoint, path: Path) -> dict[str, Any]:
    """export.format=hf: <run folder>/hf/, the healed model as its own library's folder with a model card,
    checked by loading it with that library alone; then uploaded when export.push_to_hub names a repository."""
    metadata, dtype, repo_id = checkpoint.metadata, str(cfg.export.dtype), cfg.export.push_to_hub
    refuse_structured(metadata)  # before anything is built or written
    model = rebuild(metadata["model"], metadata.get("structure"))
    restore(model, Checkpoint(checkpoint.weights, {}, metadata), path)
    structure, report = structure_of(model), _run_report(folders, metadata)
    card = model_card(metadata, report, structure, repo_id)
    section: dict[str, Any] = {}

    def fill(folder: Path) -> None:
        check = write_hub_folder(folder, structure, DTYPES[dtype], card)
        files = {file.name: file.stat().st_size for file in sorted(folder.iterdir()) if not file.name.startswith(".")}
        section.update({"folder": HF_DIR, "format": "hf", "dtype": dtype, "library": structure.hub_library,
                        "files": files, "check": check})

    target = folders.run_dir / HF_DIR
    write_folder_atomically(target, fill)
    write_report(folders.run_dir, {**report, "export": {**report.get("export", {}), "hf": section}})
    log.info("exported %s for %s (%s): loaded by %s alone, its outputs differ from the healed model's by at most "
             "%.2g on %d random inputs", target, structure.hub_library, dtype, structure.hub_library,
             section["check"]["max_output_difference"], section["check"]["inputs"])
    if repo_id:
        section["pushed_to"] = push_folder(target, str(repo_id))
        write_report(folders.run_dir, {**report, "export": {**report.get("export", {}), "hf": section}})
        log.info("pushed %s to %s", target, section["pushed_to"])
    return section


def _run_report(folders: RunFolders, metadata: dict[str, Any]) -> dict[str, Any]:
    """The run folder's report, or one made from the checkpoint's metadata when the folder has none."""
    return read_report(folders.run_dir) or {"model": {"name": metadata["model"]["name"]},
                                            **{key: metadata[key] for key in REPORT_KEYS if key in metadata}}
