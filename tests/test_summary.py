import pytest

from starfish_cli.pruning import PRUNERS
from starfish_cli.summary import mean_std, option_label, summarize


def fake_report(healer, seed, top1, dense=90.0, sparsity=0.75, pruner="wanda", seconds=1.0, labels=False):
    return {
        "pruner": {"name": pruner, "pattern": "unstructured"},
        "sparsity": {"prunable": sparsity},
        "healer": healer, "seed": seed, "recovery": top1 / dense,
        "accuracy": {"dense": {"top1": dense}, "healed": {"top1": top1}},
        "calibration": {"labels_used": labels},
        "stages": {"heal": {"seconds": seconds}},
    }


def test_option_label_names_non_default_options():
    assert option_label({"name": "starfish", "epochs": 10, "lr": 6e-4, "seed": 3}) == "starfish"
    assert option_label({"name": "starfish", "epochs": 30, "seed": 0}) == "starfish[epochs=30]"
    assert option_label({"name": "kd", "temperature": 2.0}) == "kd[temperature=2.0]"
    columns = ("name", "sparsity", "pattern")
    assert option_label({"name": "wanda", "sparsity": 0.9, "pattern": "2:4", "comparison": "row"},
                        PRUNERS, columns) == "wanda"
    assert option_label({"name": "wanda", "sparsity": 0.9, "comparison": "layer"}, PRUNERS, columns) \
        == "wanda[comparison=layer]"


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([5.0]) == (5.0, 0.0)


def test_summarize_groups_seeds_by_configuration():
    reports = [fake_report({"name": "starfish"}, s, t) for s, t in enumerate([80.0, 82.0, 84.0])]
    reports += [fake_report({"name": "kd"}, s, 70.0) for s in range(3)]
    reports += [fake_report({"name": "supervised"}, 0, 85.0, labels=True)]
    rows = summarize(reports)
    cells = rows[("wanda", "unstructured", 0.75)]["cells"]
    assert cells["starfish"]["top1"] == pytest.approx((82.0, 2.0)) and cells["starfish"]["seeds"] == [0, 1, 2]
    assert cells["kd"]["top1"] == pytest.approx((70.0, 0.0))
    assert cells["supervised"]["labels_used"] and not cells["starfish"]["labels_used"]
    assert cells["starfish"]["recovery"][0] == pytest.approx(82.0 / 90.0)


def test_summarize_keeps_pruner_options_apart():
    row_reports = [fake_report({"name": "starfish"}, s, 80.0) for s in range(2)]
    layer_reports = [fake_report({"name": "starfish"}, s, 84.0) for s in range(2)]
    for report in layer_reports:
        report["pruner"]["comparison"] = "layer"
    rows = summarize(row_reports + layer_reports)
    assert rows[("wanda", "unstructured", 0.75)]["cells"]["starfish"]["top1"][0] == pytest.approx(80.0)
    assert rows[("wanda[comparison=layer]", "unstructured", 0.75)]["cells"]["starfish"]["top1"][0] \
        == pytest.approx(84.0)


def test_written_summary_keeps_option_labels_in_the_terminal_table(tmp_path, capsys):
    import json

    from starfish_cli.summary import write_summary

    for seed in range(2):
        report = fake_report({"name": "starfish", "epochs": 30}, seed, 80.0 + seed)
        report["pruner"]["comparison"] = "layer"
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(report))
    write_summary(tmp_path)
    printed = capsys.readouterr().out
    assert "wanda[comparison=layer]" in printed and "starfish[epochs=30]" in printed
    assert "wanda[comparison=layer]" in (tmp_path / "summary.md").read_text()
