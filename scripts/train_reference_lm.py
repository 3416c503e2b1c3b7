"""Train the embedded reference language model (`lm_reference`) on Debian's fortunes and ship it.

A byte-level BPE tokenizer (HF `tokenizers`) and a tiny Llama (HF `transformers`) trained from
scratch on the train split of `starfish_cli.data.fortunes`; deterministic and seeded (the same seed,
thread count and machine give the same weights). Writes `save_pretrained` folders (config,
model.safetensors, tokenizer) so `AutoModelForCausalLM.from_pretrained(DIR)` loads it offline.
    python scripts/train_reference_lm.py --steps 200 --out starfish_cli/assets/lm_reference
(`--data fortunes_jargon` and a larger shape: `lm_medium`, see docs/reference_models.md)
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import starfish_cli
from starfish_cli.data import fortunes
from starfish_cli.data import tokens as text
from starfish_cli.data.registry import DATASETS
from starfish_cli.evaluation.metrics import next_token_nll, perplexity

ASSET_DIR = Path(starfish_cli.__file__).parent / "assets" / "lm_reference"
END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(documents: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(documents, vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT,
                                   unk_token=END_OF_TEXT)


def stream_of(tokenizer: PreTrainedTokenizerFast, documents: list[str]) -> torch.Tensor:
    return text.token_stream(lambda doc: tokenizer(doc)["input_ids"], documents, tokenizer.eos_token_id)


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, stream: torch.Tensor, context: int) -> float:
    """Perplexity over non-overlapping windows of the model's context (as `starfish` evaluates)."""
    model.eval()
    total, count = 0.0, 0
    for batch in text.windows(stream, context).split(16):
        nll = next_token_nll(model(input_ids=batch).logits, batch)
        total, count = total + nll.sum().item(), count + nll.numel()
    model.train()
    return perplexity(total, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fortunes", choices=["fortunes", "fortunes_jargon"],
                        help="the embedded corpus (starfish's data=NAME)")
    parser.add_argument("--corpus-dir", type=Path, default=fortunes.SYSTEM_DIR, help="where the fortunes are")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=384)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (part of what fixes the weights)")
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(args.seed)

    corpus = DATASETS.build({"name": args.data, "path": str(args.corpus_dir)})
    splits = {split: list(corpus.load(split)["text"]) for split in fortunes.SPLIT_FRACTIONS}
    tokenizer = train_tokenizer(splits["train"], args.vocab_size)
    streams = {name: stream_of(tokenizer, documents) for name, documents in splits.items()}
    tokenizer.model_max_length = args.context  # after tokenizing whole documents: the model's context
    print("tokens per split:", {name: len(stream) for name, stream in streams.items()}, flush=True)

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=args.context, tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))

    def lr_factor(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    train = streams["train"]
    started, running = time.time(), 0.0
    model.train()
    for step in range(args.steps):
        starts = torch.randint(0, len(train) - args.context, (args.batch_size,), generator=generator)
        batch = torch.stack([train[s:s + args.context] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running += loss.item()
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps}  train loss {running / 50:.3f}  ({time.time() - started:.0f}s)",
                  flush=True)
            running = 0.0

    results = {name: round(evaluate(model, streams[name], args.context), 2) for name in ("validation", "test")}
    print(f"perplexity: validation {results['validation']}, test {results['test']} "
          f"({time.time() - started:.0f}s)", flush=True)

    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps({
        "perplexity": results, "tokens": {name: len(stream) for name, stream in streams.items()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "seconds": round(time.time() - started),
        "torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "starfish": starfish_cli.__version__,
    }, indent=2) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    size = sum(path.stat().st_size for path in args.out.iterdir()) / 1e6
    print(f"saved {args.out} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
