"""report.json / report.md of one run: what the markdown says, from a report's values."""

from starfish_cli.reporting.report import read_report, render_markdown, write_report


def sample_report():
    return {
        "model": {"name": "vit_fmnist"}, "seed": 3,
        "pruner": {"name": "wanda", "pattern": "unstructured", "sparsity": 0.75},
        "sparsity": {"prunable": 0.75, "overall": 0.7123, "per_layer": {"blocks.0.attn.qkv": 0.75}},
        "healer": {"name": "starfish"}, "healing": {"steps": 80},
        "calibration": {"count": 240, "source": "fashion_mnist/train", "labels_used": False},
        "accuracy": {
            "split": "fashion_mnist/test", "images": 10000,
            "dense": {"top1": 88.63, "top5": 99.82, "agreement": 100.0, "block_cosine": [1.0, 1.0]},
            "pruned": {"top1": 62.2, "top5": 95.1, "agreement": 64.5, "block_cosine": [0.9, 0.7]},
            "healed": {"top1": 86.9, "top5": 99.5, "agreement": 93.0, "block_cosine": [0.99, 0.95]},
        },
        "recovery": 86.9 / 88.63,
        "stages": {"prune": {"seconds": 1.5, "peak_memory_mb": 700.0, "memory_kind": "host RSS", "reused": True}},
        "environment": {"device": "cpu", "torch": "2.14.1"},
    }


def test_markdown_gives_the_accuracy_table_alignment_sparsity_and_stages():
    text = render_markdown(sample_report())
    assert text.startswith("# starfish report: vit_fmnist")
    assert "- pruner: **wanda**, pattern unstructured, target sparsity 0.75" in text
    assert "- achieved sparsity: 0.7500 of prunable weights, 0.7123 of all parameters" in text
    assert "- healer: **starfish**, 80 steps" in text
    assert "240 images from fashion_mnist/train, labels used: false" in text
    assert "## Accuracy (10000 images, fashion_mnist/test)" in text
    assert "| healed | 86.90 | 99.50 | 0.980 | 93.00 | 0.9500 |" in text
    assert "| pruned | 62.20 | 95.10 | 0.702 | 64.50 | 0.7000 |" in text
    assert "**recovery** (healed ÷ dense top-1): 0.9805" in text
    assert "| 1 | 0.7000 | 0.9500 |" in text  # per-block alignment, pruned vs healed
    assert "| blocks.0.attn.qkv | 0.7500 |" in text
    assert "| prune | 1.5 | 700 | host RSS (reused) |" in text


def test_a_pruning_only_report_has_no_accuracy_section(tmp_path):
    report = sample_report()
    for key in ("accuracy", "recovery", "healer", "healing"):
        report.pop(key)
    write_report(tmp_path, report)
    text = (tmp_path / "report.md").read_text()
    assert "## Accuracy" not in text and "- healer: **–**" in text
    assert read_report(tmp_path)["schema_version"] == 1
