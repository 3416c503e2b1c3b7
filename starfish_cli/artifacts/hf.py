"""`starfish export format=hf`: the healed model as its own library's folder (timm's `save_for_hf`,
transformers' `save_pretrained`, written by the model's family), which loads where starfish is not
installed, with a model card; and the upload of that folder to the Hugging Face Hub."""

from pathlib import Path
from typing import Any

import torch

from starfish_cli.models import ModelStructure, family_of
from starfish_cli.runtime.errors import StarfishError, first_line

HF_DIR = "hf"  # inside the healer's run folder, beside export/ (starfish's own format, which starfish_cli.load reads)
CARD_FILE = "README.md"
TAGS = ["pruned", "sparse", "starfish"]
CHECK_INPUTS = 4
TOLERANCE = 1e-4  # × the outputs' largest magnitude: GPT-2's Conv1D and nn.Linear round differently
METRICS = {"top1": "top-1 %", "top5": "top-5 %", "perplexity": "perplexity"}
LOADING = {
    "timm": 'import timm\n\nmodel = timm.create_model("{source}", pretrained=True).eval()\n'
            'transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))',
    "transformers": 'from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                    'model = AutoModelForCausalLM.from_pretrained("{source}")\n'
                    'tokenizer = AutoTokenizer.from_pretrained("{source}")',
}


def refuse_structured(metadata: dict[str, Any]) -> None:
    """A structurally pruned model has smaller shapes than its architecture's config says: plain timm would
    build the full size and fail to load it (a causal LM's config is rewritten to its new sizes: it loads)."""
    if metadata.get("structure") and not family_of(metadata["model"]).hub_config_has_sizes:
        raise StarfishError("export.format=hf: this model was pruned structurally (heads or neurons removed), and "
                            "plain timm/transformers cannot rebuild its smaller shapes: it needs starfish_cli.load "
                            "(use export.format=safetensors)")


def write_hub_folder(folder: Path, structure: ModelStructure, dtype: torch.dtype, card: Any) -> dict[str, Any]:
    """The family's folder, the model card, and the check that the library alone loads what the model
    computes. The model's saved tensors are rounded to `dtype` first (not its buffers that are computed, such
    as rotary frequencies): what the folder holds is what is compared."""
    with torch.no_grad():
        for tensor in structure.model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype))
    structure.save_for_hub(folder, dtype)
    card.save(folder / CARD_FILE)
    return check_folder(folder, structure)


def check_folder(folder: Path, structure: ModelStructure) -> dict[str, Any]:
    """Outputs of the folder's model, loaded as its library loads it, against the model's own on a few
    random inputs; a difference beyond rounding is an error (nothing is kept)."""
    loaded = structure.load_from_hub(folder)
    inputs = structure.random_inputs(CHECK_INPUTS)
    with torch.no_grad():
        expected, got = structure.outputs(inputs), type(structure)(loaded).outputs(inputs)
    difference = float((expected - got).abs().max()) if expected.shape == got.shape else float("inf")
    if not difference <= TOLERANCE * max(1.0, float(expected.abs().max())):
        raise StarfishError(f"export.format=hf: the folder's model, loaded by {structure.hub_library}, computes other "
                            f"outputs than the healed model (largest difference {difference:.3g}): please report this")
    return {"inputs": CHECK_INPUTS, "max_output_difference": difference}


def model_card(metadata: dict[str, Any], report: dict[str, Any], structure: ModelStructure,
               repo_id: str | None = None):
    """README.md: YAML front matter for the hub (base model, library, task, tags) and what was done to the
    model (pruner, pattern, sparsity, calibration, healer) with the run's results when `eval` ran."""
    from huggingface_hub import ModelCard, ModelCardData

    name = metadata["model"]["name"]
    pattern = str(report.get("pruner", {}).get("pattern", "unstructured"))
    tags = TAGS + ([f"{pattern.replace(':', '-')}-sparsity"] if ":" in pattern else [])
    data = ModelCardData(base_model=structure.hub_base_model(metadata["model"]), library_name=structure.hub_library,
                         pipeline_tag=structure.hub_pipeline, tags=tags)
    source = repo_id or "PATH/TO/THIS/FOLDER"
    if structure.hub_library == "timm":
        source = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    lines = [f"# {Path(name).name}, pruned and healed with starfish", "",
             f"`{name}` pruned and healed with [starfish](https://pypi.org/project/starfish-cli/). The pruned weights "
             "are zeros in dense tensors: the files have the dense model's size and its layout.", "",
             "## Method", "", "| | |", "|---|---|", *_method_rows(report, metadata), "",
             *_result_lines(report), "## Use", "", "```python",
             LOADING[structure.hub_library].format(source=source), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _method_rows(report: dict[str, Any], metadata: dict[str, Any]) -> list[str]:
    pruner, healer = report.get("pruner", {}), report.get("healer", {})
    sparsity, calibration = report.get("sparsity", {}), report.get("calibration", {})
    steps = (report.get("healing") or metadata.get("healing") or {}).get("steps")
    options = ", ".join(f"{key}={value}" for key, value in pruner.items() if key not in ("name", "sparsity", "pattern"))
    method = "prune, then heal" + (" by aligning the pruned model's internal states with the dense model's "
                                   "(STARFISH)" if healer.get("name") == "starfish" else "")
    rows = {"method": method,
            "pruner": f"{pruner.get('name')}" + (f" ({options})" if options else ""),
            "pattern": pruner.get("pattern", "unstructured"),
            "sparsity achieved": _sparsity(sparsity),
            "calibration": f"{calibration.get('count', '?')} items of {calibration.get('source', '?')}",
            "healer": f"{healer.get('name')}" + (f" ({steps} optimizer steps)" if steps is not None else "")}
    return [f"| {key} | {value} |" for key, value in rows.items()]


def _sparsity(sparsity: dict[str, Any]) -> str:
    if "prunable" not in sparsity:
        return "–"
    overall = f" ({100 * sparsity['overall']:.1f}% of all parameters)" if "overall" in sparsity else ""
    return f"{100 * sparsity['prunable']:.1f}% of the prunable weights are zero{overall}"


def _result_lines(report: dict[str, Any]) -> list[str]:
    """The dense, pruned and healed models' headline metrics from report.json (none before `eval`)."""
    accuracy = report.get("accuracy") or {}
    models = [model for model in ("dense", "pruned", "healed") if model in accuracy]
    metrics = [key for key in METRICS if any(key in accuracy[model] for model in models)]
    if not models or not metrics:
        return []
    lines = [f"## Results ({accuracy.get('split', '?')}, {accuracy.get('images', '?')} evaluation items)", "",
             "| model | " + " | ".join(METRICS[key] for key in metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {model} | " + " | ".join(_number(accuracy[model].get(key)) for key in metrics) + " |"
              for model in models]
    if report.get("recovery") is not None:
        lines += ["", f"Recovery (healed ÷ dense top-1): {report['recovery']:.4f}"]
    return lines + [""]


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def push_folder(folder: Path, repo_id: str) -> str:
    """Upload `folder` to the hub model repository `repo_id` (made when missing); its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="starfish export format=hf")
    except Exception as error:  # the network boundary: the hub client's HTTP errors are not all OSErrors
        raise StarfishError(f"export.push_to_hub={repo_id}: the upload failed ({first_line(error, 160)}): log in "
                            "(`hf auth login`) and check the network, then rerun") from error
    return str(url)
