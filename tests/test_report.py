"""report.json / report.md of one run: what the markdown says, from a report's values."""

import pytest

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
        "stages": {"prune": {"seconds": 1.5, "peak_memory_mb": 700.0, "memory_kind": "host RSS", "reused": True},
                   "eval": {"seconds": 2.0, "peak_memory_mb": 900.0, "memory_kind": "cuda allocated",
                            "peak_rss_mb": 3100.0}},
        "environment": {"device": "cpu", "torch": "2.14.1"},
    }


def test_markdown_gives_the_accuracy_table_alignment_sparsity_and_stages():
    text = render_markdown(sample_report())
    assert text.startswith("# starfish report: vit_fmnist")
    assert "- pruner: **wanda**, pattern unstructured, target sparsity 0.75" in text
    assert "- achieved sparsity: 0.7500 of prunable weights, 0.7123 of all parameters" in text
    assert "- healer: **starfish**, 80 steps" in text
    assert "240 images from fashion_mnist/train, labels used: false" in text
    with_recipe = sample_report()
    with_recipe["healer"].update(recipe="high", epochs=7, batch_size=8, lr=2.4e-3)
    assert "- healer: **starfish**, recipe high (7 epochs, batch 8, lr 0.0024), 80 steps" in render_markdown(with_recipe)
    assert "## Accuracy (10000 images, fashion_mnist/test)" in text
    assert "| healed | 86.90 | 99.50 | 0.980 | 93.00 | 0.9500 |" in text
    assert "| pruned | 62.20 | 95.10 | 0.702 | 64.50 | 0.7000 |" in text
    assert "**recovery** (healed ÷ dense top-1): 0.9805" in text
    assert "| 1 | 0.7000 | 0.9500 |" in text  # per-block alignment, pruned vs healed
    assert "| blocks.0.attn.qkv | 0.7500 |" in text
    assert "| prune | 1.5 | 700 | host RSS (reused) | – |" in text  # recorded before the host peak was
    assert "| eval | 2.0 | 900 | cuda allocated | 3100 |" in text  # on a GPU, the process's peak RSS as well


def test_a_pruning_only_report_has_no_accuracy_section(tmp_path):
    report = sample_report()
    for key in ("accuracy", "recovery", "healer", "healing"):
        report.pop(key)
    write_report(tmp_path, report)
    text = (tmp_path / "report.md").read_text()
    assert "## Accuracy" not in text and "- healer: **–**" in text
    assert read_report(tmp_path)["schema_version"] == 1


def healing_report():
    report = sample_report()
    report["healing"] = {"steps": 8, "loss_history": [4.0, 3.0, 2.5, 2.0, 1.2, 1.0, 0.9, 0.8],
                         "stages": [{"sparsity": 0.5, "steps": 4}, {"sparsity": 0.75, "steps": 4}]}
    return report


def test_report_md_links_plots_of_the_healing_loss_and_the_block_alignment(tmp_path):
    written = write_report(tmp_path, healing_report())
    assert [path.name for path in written] == ["report.json", "healing_loss.png", "block_alignment.png", "report.md"]
    for name in ("healing_loss.png", "block_alignment.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
    text = (tmp_path / "report.md").read_text()
    assert "![healing loss](healing_loss.png)" in text and "![block alignment](block_alignment.png)" in text
    assert list(tmp_path.glob(".*.tmp")) == []  # written atomically


def test_no_plots_without_a_loss_history_or_block_cosines(tmp_path):
    write_report(tmp_path, healing_report())  # an earlier report's plots, which the new one has no data for
    report = healing_report()
    report["healing"] = {"steps": 0, "loss_history": []}  # healer=none
    report.pop("accuracy")  # before eval
    assert [path.name for path in write_report(tmp_path, report)] == ["report.json", "report.md"]
    assert not (tmp_path / "healing_loss.png").exists() and not (tmp_path / "block_alignment.png").exists()
    assert "![" not in (tmp_path / "report.md").read_text()


def test_healing_loss_plot_marks_the_stage_boundaries(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from starfish_cli.reporting import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure))
    monkeypatch.setattr(plt, "close", lambda figure: None)
    plots.plot_healing_loss(healing_report()["healing"], tmp_path / "healing_loss.png")
    (axis,) = figures[0].axes
    boundaries = [line.get_xdata()[0] for line in axis.lines if line.get_linestyle() == "--"]
    assert boundaries == [4.5]  # between step 4, the last at sparsity 0.5, and step 5
    assert list(axis.lines[0].get_ydata()) == healing_report()["healing"]["loss_history"]
    assert axis.get_yscale() == "log"


@pytest.mark.parametrize("records,expected", [
    ([{"items": 16, "epochs": [0, 1, 2], "best_epoch": 1}], ", epoch kept on 16 held-out items: 1 of 2"),
    ([{"items": 4, "epochs": [0, 1, 2, 3], "best_epoch": 3}, {"items": 4, "epochs": [0, 1, 2], "best_epoch": 0}],
     ", epoch kept on 4 held-out items: 0-3 in 2 loops, of 2-3 epochs"),
])
def test_report_md_says_which_epoch_the_held_out_loss_kept(tmp_path, records, expected):
    report = healing_report()
    report["healing"]["holdout"] = records
    write_report(tmp_path, report)
    assert "8 steps, in stages 0.5 → 0.75 sparsity: 4 + 4 steps" + expected in (tmp_path / "report.md").read_text()
