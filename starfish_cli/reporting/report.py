"""Run reports: report.json (stable schema), report.md with its plots, and a rich table on the terminal."""

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from starfish_cli.reporting.plots import plot_block_alignment, plot_healing_loss
from starfish_cli.runtime.atomic import write_text_atomically

SCHEMA_VERSION = 1
MODEL_ROWS = ("dense", "pruned", "healed")
REPORT_FILES = ("report.json", "report.md")
HEALING_LOSS_PLOT = "healing_loss.png"
BLOCK_ALIGNMENT_PLOT = "block_alignment.png"
PLOT_FILES = (HEALING_LOSS_PLOT, BLOCK_ALIGNMENT_PLOT)


def read_report(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "report.json"
    try:
        report = json.loads(path.read_text())
        return report if report.get("schema_version") == SCHEMA_VERSION else {}
    except (OSError, ValueError):
        return {}


def has_loss_history(report: dict[str, Any]) -> bool:
    """Whether healing recorded a loss per optimizer step (healer=none takes none)."""
    return bool(report.get("healing", {}).get("loss_history"))


def has_block_alignment(report: dict[str, Any]) -> bool:
    """Whether evaluation measured each block's cosine with the dense model (no accuracy before `eval`)."""
    return bool(report.get("accuracy", {}).get("dense", {}).get("block_cosine"))


def write_report(run_dir: Path, report: dict[str, Any]) -> list[Path]:
    """report.json, the plots the report has data for (PLOT_FILES; an earlier one it has none for is removed,
    so that report.md links what is there) and report.md; returns the files written."""
    report, run_dir = {"schema_version": SCHEMA_VERSION, **report}, Path(run_dir)
    write_text_atomically(run_dir / "report.json", json.dumps(report, indent=2, sort_keys=False) + "\n")
    written = [run_dir / "report.json"]
    plots = {HEALING_LOSS_PLOT: (has_loss_history(report), lambda path: plot_healing_loss(report["healing"], path)),
             BLOCK_ALIGNMENT_PLOT: (has_block_alignment(report),
                                    lambda path: plot_block_alignment(report["accuracy"], path))}
    for name, (wanted, plot) in plots.items():
        if wanted:
            plot(run_dir / name)
            written.append(run_dir / name)
        else:
            (run_dir / name).unlink(missing_ok=True)
    write_text_atomically(run_dir / "report.md", render_markdown(report))
    return written + [run_dir / "report.md"]


def _blocks(sparsity: dict[str, Any]) -> str:
    """How much of the blocks' weight matrices the prunable weights are (below 1: routers, or layers left dense)."""
    blocks = sparsity.get("block_weights")
    if not blocks:
        return ""
    return (f"; the blocks' weight matrices: {_fmt(blocks['prunable'], 4)} prunable, "
            f"{_fmt(blocks['zero'], 4)} zero")


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def is_perplexity(report: dict[str, Any]) -> bool:
    """A causal LM's report: perplexity and next-token top-1 instead of classification accuracy."""
    return "perplexity" in report.get("accuracy", {}).get("dense", {})


def accuracy_rows(report: dict[str, Any]) -> list[list[str]]:
    accuracy = report.get("accuracy", {})
    dense_top1 = accuracy.get("dense", {}).get("top1")
    dense_perplexity = accuracy.get("dense", {}).get("perplexity")
    rows = []
    for name in MODEL_ROWS:
        entry = accuracy.get(name)
        if not entry:
            continue
        if dense_perplexity is not None:
            cosine = entry.get("block_cosine") or []
            rows.append([name, _fmt(entry["perplexity"]), _fmt(entry["perplexity"] / dense_perplexity, 3),
                         _fmt(entry["top1"]), _fmt(entry.get("agreement")), _fmt(min(cosine), 4) if cosine else "–"])
            continue
        recovery = entry["top1"] / dense_top1 if dense_top1 else None
        cosine = entry.get("block_cosine") or []
        rows.append([
            name, _fmt(entry["top1"]), _fmt(entry["top5"]), _fmt(recovery, 3),
            _fmt(entry.get("agreement")), _fmt(min(cosine), 4) if cosine else "–",
        ])
    return rows


ACCURACY_HEADER = ["model", "top-1 %", "top-5 %", "÷ dense", "agrees with dense %", "worst block cos"]
PERPLEXITY_HEADER = ["model", "perplexity", "÷ dense", "next-token top-1 %", "next token agrees with dense %",
                     "worst block cos"]


def metric_header(report: dict[str, Any]) -> list[str]:
    return PERPLEXITY_HEADER if is_perplexity(report) else ACCURACY_HEADER


def _smaller(sparsity: dict[str, Any]) -> str:
    """`; 612,000 of 1,199,882 parameters remain (1.96× smaller)` when whole units were removed."""
    remaining, total = sparsity.get("remaining_parameters"), sparsity.get("total_parameters")
    if not remaining or not total or remaining >= total:
        return ""
    return f"; {remaining:,} of {total:,} parameters remain ({total / remaining:.2f}× smaller)"


def _stages(healing: dict[str, Any]) -> str:
    """Gradual healing's split of the steps: `, in stages 0.5 → 0.75 → 0.9 sparsity: 4 + 4 + 8 steps`."""
    stages = healing.get("stages")
    if not stages:
        return ""
    return (", in stages " + " → ".join(f"{stage['sparsity']:g}" for stage in stages) + " sparsity: "
            + " + ".join(str(stage["steps"]) for stage in stages) + " steps")


def _holdout(healing: dict[str, Any]) -> str:
    """Early stopping's choice: `, epoch kept on 16 held-out items: 6 of 7` (one loop) or `…: 5-7 in 30 loops, of
    7-7 epochs` (block-wise)."""
    records = healing.get("holdout")
    if not records:
        return ""
    kept = [record["best_epoch"] for record in records]
    run = [record["epochs"][-1] for record in records]
    choice = (f"{kept[0]} of {run[0]}" if len(records) == 1 else
              f"{min(kept)}-{max(kept)} in {len(records)} loops, of {min(run)}-{max(run)} epochs")
    return f", epoch kept on {records[0]['items']} held-out items: {choice}"


def _recipe(healer: dict[str, Any]) -> str:
    """`, recipe high (7 epochs, batch 8, lr 0.0024)`: the healing recipe and what the run took from it or set."""
    if "recipe" not in healer:
        return ""
    return (f", recipe {healer['recipe']} ({healer.get('epochs')} epochs, batch {healer.get('batch_size')}, "
            f"lr {healer.get('lr'):g})")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# starfish report: {report.get('model', {}).get('name', '?')}", ""]
    pruner, healer = report.get("pruner", {}), report.get("healer", {})
    sparsity, calibration = report.get("sparsity", {}), report.get("calibration", {})
    items = f"windows of {calibration['seq_len']} tokens" if "seq_len" in calibration else "images"
    lines += [
        f"- pruner: **{pruner.get('name', '–')}**, pattern {pruner.get('pattern', '–')}, "
        f"target sparsity {pruner.get('sparsity', '–')}",
        f"- achieved sparsity: {_fmt(sparsity.get('prunable'), 4)} of prunable weights, "
        f"{_fmt(sparsity.get('overall'), 4)} of all parameters" + _smaller(sparsity) + _blocks(sparsity),
        f"- healer: **{healer.get('name', '–')}**" + _recipe(healer)
        + (f", {report['healing']['steps']} steps" + _stages(report['healing']) + _holdout(report['healing'])
           if "healing" in report else ""),
        f"- calibration: {calibration.get('count', '–')} {items} from {calibration.get('source', '–')}, "
        f"labels used: {str(report.get('calibration', {}).get('labels_used', '–')).lower()}",
        f"- seed {report.get('seed', '–')}",
        "",
    ]
    lines += accuracy_lines(report)
    if has_loss_history(report):
        lines += ["## Healing loss per optimizer step", "", f"![healing loss]({HEALING_LOSS_PLOT})", ""]
    lines += zero_shot_lines(report.get("zero_shot"))
    lines += speed_lines(report.get("speed"))
    if sparsity.get("per_layer"):
        lines += ["## Achieved sparsity per layer", "", "| layer | sparsity |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in sparsity["per_layer"].items()]
        lines.append("")
    if report.get("stages"):
        lines += ["## Stages", "", "| stage | wall time s | peak memory MB | memory kind | peak host RSS MB |",
                  "|---|---|---|---|---|"]
        for stage, entry in report["stages"].items():
            reused = " (reused)" if entry.get("reused") else ""  # an earlier invocation's figures
            rss = f"{entry['peak_rss_mb']:.0f}" if "peak_rss_mb" in entry else "–"  # earlier reports did not record it
            lines.append(f"| {stage} | {entry['seconds']:.1f} | {entry['peak_memory_mb']:.0f} | "
                         f"{entry['memory_kind']}{reused} | {rss} |")
        lines.append("")
    lines += export_lines(report.get("export"))
    environment = report.get("environment", {})
    if environment:
        lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in environment.items()] + [""]
    return "\n".join(lines)


def accuracy_lines(report: dict[str, Any]) -> list[str]:
    """report.md's accuracy (or perplexity) table of the dense, pruned and healed models, and each block's
    alignment with dense as a table and a plot; nothing before `eval`."""
    if "accuracy" not in report:
        return []
    accuracy, header = report["accuracy"], metric_header(report)
    title = (f"## Perplexity ({accuracy.get('images')} windows, {accuracy['dense'].get('tokens')} predicted tokens"
             if is_perplexity(report) else f"## Accuracy ({accuracy.get('images')} images")
    lines = [f"{title}, {accuracy.get('split')})", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in accuracy_rows(report)]
    lines += ["", f"**recovery** (healed ÷ dense top-1): {_fmt(report.get('recovery'), 4)}", ""]
    if has_block_alignment(report):
        lines += ["## Per-block alignment with dense (mean token cosine)", "",
                  f"![block alignment]({BLOCK_ALIGNMENT_PLOT})", "", "| block | pruned | healed |", "|---|---|---|"]
        pruned, healed = accuracy["pruned"]["block_cosine"], accuracy["healed"]["block_cosine"]
        lines += [f"| {i} | {_fmt(pruned[i], 4)} | {_fmt(healed[i], 4)} |"
                  for i in range(len(accuracy["dense"]["block_cosine"]))]
        lines.append("")
    return lines


def zero_shot_rows(zero_shot: dict[str, Any]) -> list[list[str]]:
    """One row per task and metric: the examples, the dense, pruned and healed scores in percent, healed ÷ dense."""
    models = zero_shot["models"]
    rows = []
    for task, metrics in models["dense"].items():
        for metric, dense in metrics.items():
            healed = models["healed"][task][metric]
            rows.append([task, metric, str(zero_shot["samples"].get(task, "–")),
                         *(f"{100 * models[name][task][metric]:.2f}" for name in ("dense", "pruned", "healed")),
                         f"{healed / dense:.3f}" if dense else "–"])
    return rows


ZERO_SHOT_HEADER = ["task", "metric", "examples", "dense %", "pruned %", "healed %", "healed ÷ dense"]


def zero_shot_lines(zero_shot: dict[str, Any] | None) -> list[str]:
    """report.md's section on the lm-eval tasks (eval.tasks)."""
    if not zero_shot:
        return []
    return [f"## Zero-shot tasks (lm-evaluation-harness {zero_shot['lm_eval']}, {zero_shot['num_fewshot']}-shot)", "",
            "| " + " | ".join(ZERO_SHOT_HEADER) + " |", "|" + "---|" * len(ZERO_SHOT_HEADER),
            *("| " + " | ".join(row) + " |" for row in zero_shot_rows(zero_shot)), ""]


def speed_lines(speed: dict[str, Any] | None) -> list[str]:
    """report.md's section on speed and size: images/s at each batch size against dense, MACs, parameters."""
    if not speed:
        return []
    batches = speed["batch_sizes"]
    header = ["model", "parameters", "nonzero", "MMACs/image"] + [f"images/s @{b}" for b in batches] \
        + [f"× dense @{b}" for b in batches]
    lines = [f"## Speed and size ({speed['device']}, same images, same process)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in speed["models"].items():
        macs = entry.get("macs_per_image")
        lines.append("| " + " | ".join([name, f"{entry['parameters']:,}", f"{entry['nonzero_parameters']:,}",
                                        f"{macs / 1e6:.1f}" if macs is not None else "–"]
                                       + [f"{entry['images_per_second'][str(b)]:.1f}" for b in batches]
                                       + [f"{entry['vs_dense'][str(b)]:.2f}" for b in batches]) + " |")
    lines += [f"- {name}: {note}" for name, note in speed.get("notes", {}).items()]
    return lines + [""] + generation_lines(speed)


def generation_lines(speed: dict[str, Any]) -> list[str]:
    """A language model's prefill and decode tokens/s against dense, and the size of its weights."""
    generation = speed.get("generation")
    if not generation:
        return []
    lines = [f"Generation: a {generation['prompt_tokens']}-token prompt (batch {generation['batch_size']}), then "
             f"{generation['new_tokens']} greedy tokens on the KV cache; models alternated, fastest of each.", "",
             "| model | weights MB | prefill tokens/s | × dense | decode tokens/s | × dense |", "|---|---|---|---|---|---|"]
    for name, entry in generation["models"].items():
        size = speed["models"].get(name, {}).get("weight_bytes")
        lines.append(f"| {name} | {f'{size / 1e6:.1f}' if size else '–'} | {entry['prefill_tokens_per_second']:.0f} | "
                     f"{entry['prefill_vs_dense']:.2f} | {entry['decode_tokens_per_second']:.1f} | "
                     f"{entry['decode_vs_dense']:.2f} |")
    return lines + [""]


def export_lines(export: dict[str, Any] | None) -> list[str]:
    """report.md's section on `starfish export`: the files, their size against the dense model, ONNX's check,
    and the folder of `format=hf` (`hf`)."""
    if not export:
        return []
    hub = export.get("hf")
    hub_lines = [f"## Export for {hub['library']} ({hub['folder']}/, {hub['dtype']})", "", "| file | bytes |", "|---|---|",
                 *[f"| {name} | {size} |" for name, size in hub["files"].items()], "",
                 f"Loaded by {hub['library']} alone: outputs within {hub['check']['max_output_difference']:.2g} of the "
                 f"healed model's on {hub['check']['inputs']} random inputs"
                 + (f"; pushed to {hub['pushed_to']}" if hub.get("pushed_to") else ""), ""] if hub else []
    if "folder" not in export:  # only format=hf so far
        return hub_lines
    lines = [f"## Export ({export['folder']}/, {export['dtype']})", "", "| file | bytes |", "|---|---|"]
    lines += [f"| {name} | {size} |" for name, size in export["files"].items()]
    lines += ["", f"model.safetensors: **{export['ratio']:.3f}×** the dense model's safetensors file "
                  f"({export['dense_bytes']} bytes)", ""]
    onnx = export.get("onnx")
    if onnx:
        lines += [f"ONNX on {onnx['images']} images: top-1 {_fmt(onnx['top1_onnxruntime'])}% in onnxruntime, "
                  f"{_fmt(onnx['top1_pytorch'])}% in PyTorch; {onnx['images_per_second_onnxruntime']:.0f} vs "
                  f"{onnx['images_per_second_pytorch']:.0f} images/s (CPU)", ""]
    return lines + hub_lines


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"starfish: {report.get('model', {}).get('name', '?')} · "
                        f"{report.get('pruner', {}).get('name')} {report.get('pruner', {}).get('pattern')} "
                        f"sparsity {_fmt(report.get('sparsity', {}).get('prunable'), 3)} · "
                        f"healer {report.get('healer', {}).get('name')}"
                        + (f" (recipe {report['healer']['recipe']})" if "recipe" in report.get("healer", {}) else ""))
    for column in metric_header(report):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in accuracy_rows(report):
        table.add_row(*row)
    console.print(table)
    if report.get("recovery") is not None:
        console.print(f"recovery (healed ÷ dense top-1): [bold]{report['recovery']:.4f}[/bold]")
    if report.get("zero_shot"):
        tasks = Table(title=f"zero-shot tasks ({report['zero_shot']['num_fewshot']}-shot, lm-eval)")
        for column in ZERO_SHOT_HEADER:
            tasks.add_column(column, justify="left" if column in ("task", "metric") else "right")
        for row in zero_shot_rows(report["zero_shot"]):
            tasks.add_row(*row)
        console.print(tasks)
    speed = report.get("speed")
    if speed and speed["batch_sizes"]:
        batch = speed["batch_sizes"][-1]
        console.print(f"images/s at batch {batch}: " + ", ".join(
            f"{name} {entry['images_per_second'][str(batch)]:.0f} ({entry['vs_dense'][str(batch)]:.2f}× dense)"
            for name, entry in speed["models"].items()))
    for kind in ("prefill", "decode") if speed and speed.get("generation") else ():
        console.print(f"{kind} tokens/s: " + ", ".join(
            f"{name} {entry[f'{kind}_tokens_per_second']:.0f} ({entry[f'{kind}_vs_dense']:.2f}× dense)"
            for name, entry in speed["generation"]["models"].items()))
