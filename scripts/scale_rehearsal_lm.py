"""A language model larger than this machine can hold twice, pruned, healed block-wise and evaluated one decoder
layer at a time: per run, seconds per layer, peak host memory, bytes read and written, and what that makes of
Llama-2-7B and 70B with the field's calibration (128 × 2,048 tokens).

    python scripts/scale_rehearsal_lm.py [--folder DIR (made if missing)] [--hidden 3200] [--intermediate 8640]
        [--layers 26] [--pruners wanda sparsegpt] [--calib 4] [--seq-len 128] [--eval 2] [--out DIR]

The folder is a random-init Llama-architecture save_pretrained folder (3.4B parameters, 13.7 GB in fp32 by
default: OpenLLaMA-3B's shape), written shard by shard so that it is never whole in memory, with the embedded
LM's tokenizer. Each run is `starfish run model=hf_causal_lm model.name=DIR healer.mode=blockwise` as a user
types it: starfish picks layer-by-layer onloading by itself. The healed folder is then loaded by plain
transformers (bf16) and its perplexity on the evaluation windows is printed.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parent.parent / "starfish_cli" / "assets" / "lm_reference"
# Llama-2 shapes (hidden, intermediate, layers, heads, kv heads, vocabulary) for the extrapolation
TARGETS = {"Llama-2-7B": (4096, 11008, 32, 32, 32, 32000), "Llama-2-70B": (8192, 28672, 80, 64, 8, 32000)}
FIELD_TOKENS = 128 * 2048  # the field's calibration: 128 windows of 2,048 tokens of C4
# an assumption, not a measurement (no GPU here): an H200 sustaining 30% of its 989 TFLOP/s dense bf16 peak
ASSUMED_H200_FLOPS = 0.3 * 989e12
PASSES = 6  # forwards over the calibration per layer: dense, Wanda's statistics, healed, one heal step (×3)


def layer_shapes(hidden: int, intermediate: int, heads: int, kv_heads: int) -> dict[str, tuple[int, int]]:
    kv = hidden // heads * kv_heads
    return {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
            "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (intermediate, hidden),
            "mlp.up_proj": (intermediate, hidden), "mlp.down_proj": (hidden, intermediate)}


def write_folder(folder: Path, hidden: int, intermediate: int, layers: int, heads: int, vocabulary: int) -> int:
    """A random-init Llama folder, one shard per decoder layer; its parameter count."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocabulary,
                         max_position_embeddings=2048, tie_word_embeddings=False)
    generator = torch.Generator().manual_seed(0)
    weight_map, count, shards = {}, 0, layers + 1
    for number in range(shards):
        if number < layers:
            tensors = {f"model.layers.{number}.{name}.weight": torch.randn(shape, generator=generator) * 0.02
                       for name, shape in layer_shapes(hidden, intermediate, heads, heads).items()}
            tensors |= {f"model.layers.{number}.{norm}.weight": torch.ones(hidden)
                        for norm in ("input_layernorm", "post_attention_layernorm")}
        else:
            tensors = {"model.embed_tokens.weight": torch.randn(vocabulary, hidden, generator=generator) * 0.02,
                       "lm_head.weight": torch.randn(vocabulary, hidden, generator=generator) * 0.02,
                       "model.norm.weight": torch.ones(hidden)}
        name = f"model-{number + 1:05d}-of-{shards:05d}.safetensors"
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        count += sum(tensor.numel() for tensor in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": count * 4}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(REFERENCE / file, folder / file)
    return count


def run_starfish(folder: Path, pruner: str, args) -> dict:
    """`starfish run` on the folder in a child process; its report and peak resident memory (os.wait4)."""
    run_dir = args.out / pruner
    command = [sys.executable, "-m", "starfish_cli", "run", "model=hf_causal_lm", f"model.name={folder}",
               "data=fortunes", f"pruner={pruner}", "healer.mode=blockwise", "healer.epochs=1",
               f"healer.batch_size={args.calib}", f"calib.count={args.calib}", f"calib.seq_len={args.seq_len}",
               f"eval.max_images={args.eval}", f"eval.seq_len={args.seq_len}", f"eval.batch_size={args.eval}",
               "eval.speed=false", f"device={args.device}", f"onload={args.onload}", "skip_finished=false",
               f"hydra.run.dir={run_dir}"]
    print("$", " ".join(command), flush=True)
    child = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"starfish run failed ({os.waitstatus_to_exitcode(status)})")
    report = json.loads((run_dir / "report.json").read_text())
    return {"report": report, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "run_dir": run_dir}


def healed_perplexity(run_dir: Path, args) -> float:
    """The healed folder loaded by plain transformers (bf16), its perplexity on the run's evaluation windows."""
    code = (
        "import sys, torch, transformers\n"
        "from starfish_cli.data import DATASETS\n"
        "model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)\n"
        "tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "items, _ = DATASETS.build({'name': 'fortunes'}).evaluation_items(int(sys.argv[2]), tokenizer=tokenizer,"
        " context=2048, window=2048, seq_len=int(sys.argv[3]))\n"
        "ids = torch.stack([items[i][1] for i in range(len(items))])\n"
        "with torch.no_grad(): loss = model(input_ids=ids, labels=ids).loss.float()\n"
        "print(float(loss.exp()))\n")
    result = subprocess.run([sys.executable, "-c", code, str(run_dir / "healed"), str(args.eval), str(args.seq_len)],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def flops_per_layer(hidden: int, intermediate: int, heads: int, kv_heads: int, tokens: int) -> dict[str, float]:
    """Multiply-adds × 2 of one decoder layer's linears: a forward over `tokens`, and SparseGPT's OBS pass."""
    shapes = layer_shapes(hidden, intermediate, heads, kv_heads).values()
    return {"forward": 2.0 * tokens * sum(rows * cols for rows, cols in shapes),
            "sparsegpt": sum(rows * cols * cols + cols ** 3 for rows, cols in shapes)}


def extrapolate(measured: dict, args) -> list[dict]:
    """Seconds per layer here scaled by the work per layer (forward passes ∝ weights × tokens; SparseGPT's pass
    ∝ rows × columns², its share of the time being what it takes beyond Wanda's run), for each target model with
    the field's calibration; and the bytes every strategy holds on a device (fp32 weights, a layer's Adam state; FSDP2's end-to-end footprint from healing.footprint)."""
    from starfish_cli.healing.footprint import ACTIVATION_BYTES, FP32, TRAINED_STATE, Footprint
    from starfish_cli.onloading.sequential import CALIBRATION_STREAMS

    here = flops_per_layer(args.hidden, args.intermediate, args.heads, args.heads, args.calib * args.seq_len)
    rows = []
    for name, (hidden, intermediate, layers, heads, kv_heads, vocabulary) in TARGETS.items():
        there = flops_per_layer(hidden, intermediate, heads, kv_heads, FIELD_TOKENS)
        layer = sum(rows * cols for rows, cols in layer_shapes(hidden, intermediate, heads, kv_heads).values())
        outside = 2 * vocabulary * hidden
        seconds, h200_hours = {}, {}
        per_layer = {pruner: sum(run["report"]["onloading"]["seconds_per_layer"])
                     / len(run["report"]["onloading"]["seconds_per_layer"]) for pruner, run in measured.items()}
        for pruner in measured:
            forwards = per_layer.get("wanda", per_layer[pruner]) if pruner == "sparsegpt" else per_layer[pruner]
            seconds[pruner] = forwards * there["forward"] / here["forward"] * layers
            if pruner == "sparsegpt":  # what it takes beyond Wanda's run is its OBS pass, which does not grow with tokens
                obs = per_layer[pruner] - forwards if "wanda" in per_layer else 0.0
                seconds[pruner] += obs * there["sparsegpt"] / here["sparsegpt"] * layers
            work = layers * (PASSES * there["forward"] + (there["sparsegpt"] if pruner == "sparsegpt" else 0))
            h200_hours[pruner] = work / ASSUMED_H200_FLOPS / 3600
        onload_device = FP32 * (layer * (1 + TRAINED_STATE) + outside)  # one layer trained + embeddings and head
        stream = FIELD_TOKENS * hidden * FP32  # one model's hidden states of the calibration set, on the host
        total = layers * layer + outside
        footprint = Footprint(fixed=FP32 * total + FP32 * outside,
                              sharded=FP32 * layers * layer * (1 + TRAINED_STATE)
                              + 8 * layers * 2048 * hidden * ACTIVATION_BYTES * 2)  # batch 8 windows of 2,048
        rows.append({"model": name, "parameters": total, "cpu_hours_here": {k: v / 3600 for k, v in seconds.items()},
                     "h200_hours_assumed": h200_hours,
                     "onload_device_gb": onload_device / 1e9, "host_streams_gb": CALIBRATION_STREAMS * stream / 1e9,
                     "fsdp8_end_to_end_gb_per_device": footprint.per_device(8) / 1e9,
                     "fsdp_devices_for_141gb": footprint.devices_needed(141 * 10**9)})
    return rows


def markdown(folder_parameters: int, measured: dict, extrapolated: list[dict], args) -> str:
    size = f"{folder_parameters / 1e9:.2f}B parameters ({folder_parameters * 4 / 1e9:.1f} GB fp32)"
    lines = [f"Random-init Llama, {size}, "
             f"{args.layers} layers; calibration {args.calib} × {args.seq_len} tokens, evaluation {args.eval} × "
             f"{args.seq_len}; device {args.device}", "",
             "| pruner | s per layer | total s | peak RSS GB | GB read | GB written "
             "| perplexity dense / pruned / healed | healed folder in transformers |",
             "|---|---|---|---|---|---|---|---|"]
    for pruner, run in measured.items():
        onloading, accuracy = run["report"]["onloading"], run["report"]["accuracy"]
        seconds = onloading["seconds_per_layer"]
        lines.append(f"| {pruner} | {sum(seconds) / len(seconds):.1f} | {sum(seconds):.0f} | "
                     f"{run['peak_rss_gb']:.2f} | "
                     f"{onloading['bytes_read'] / 1e9:.1f} | {onloading['bytes_written'] / 1e9:.1f} | "
                     + " / ".join(f"{accuracy[m]['perplexity']:.4g}" for m in ("dense", "pruned", "healed"))
                     + f" | {run['transformers_perplexity']:.4g} |")
    lines += ["", "| model | parameters | CPU hours here, per pruner (work-scaled, 1 healing epoch) | device GB, onloading "
              "| H200 hours, 1 healing epoch (FLOPs at an assumed 30% of bf16 peak) | host GB, calibration states "
              "| GB per device, end-to-end FSDP2 × 8 | H200s for end-to-end FSDP2 |",
              "|---|---|---|---|---|---|---|---|"]
    for row in extrapolated:
        hours = ", ".join(f"{k} {v:,.0f}" for k, v in row["cpu_hours_here"].items())
        gpu = ", ".join(f"{k} {v:.2g}" for k, v in row["h200_hours_assumed"].items())
        devices = row["fsdp_devices_for_141gb"] or "none (the teacher alone exceeds one)"
        lines.append(f"| {row['model']} | {row['parameters'] / 1e9:.1f}B | {hours} | {row['onload_device_gb']:.1f} | "
                     f"{gpu} | {row['host_streams_gb']:.1f} | {row['fsdp8_end_to_end_gb_per_device']:.0f} | {devices} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("outputs/rehearsal_lm/model"))
    parser.add_argument("--hidden", type=int, default=3200)
    parser.add_argument("--intermediate", type=int, default=8640)
    parser.add_argument("--layers", type=int, default=26)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--vocabulary", type=int, default=32000)
    parser.add_argument("--pruners", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--calib", type=int, default=4, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval", type=int, default=2, help="evaluation windows")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--onload", default="auto", help="auto: starfish decides (a model this size: layer by layer)")
    parser.add_argument("--keep", action="store_true", help="keep the pruned and healed folders (disk: the model's size each)")
    parser.add_argument("--out", type=Path, default=Path("outputs/rehearsal_lm"))
    args = parser.parse_args()
    if not (args.folder / "model.safetensors.index.json").is_file():
        print(f"writing {args.folder} …", flush=True)
        write_folder(args.folder, args.hidden, args.intermediate, args.layers, args.heads, args.vocabulary)
    weights = json.loads((args.folder / "model.safetensors.index.json").read_text())["metadata"]["total_size"] // 4
    measured = {}
    for pruner in args.pruners:
        measured[pruner] = run_starfish(args.folder, pruner, args)
        measured[pruner]["transformers_perplexity"] = healed_perplexity(measured[pruner]["run_dir"], args)
        if not math.isfinite(measured[pruner]["transformers_perplexity"]):
            raise SystemExit(f"{pruner}: the healed folder's perplexity is not finite")
        if not args.keep:
            for folder in ("healed", "pruned"):
                shutil.rmtree(measured[pruner]["run_dir"] / folder, ignore_errors=True)
    extrapolated = extrapolate(measured, args)
    text = markdown(weights, measured, extrapolated, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rehearsal.json").write_text(json.dumps(
        {"runs": {k: {"peak_rss_gb": v["peak_rss_gb"], "transformers_perplexity": v["transformers_perplexity"],
                      "onloading": v["report"]["onloading"], "accuracy": v["report"]["accuracy"]}
                  for k, v in measured.items()}, "extrapolated": extrapolated}, indent=2) + "\n")
    (args.out / "rehearsal.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
