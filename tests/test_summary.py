import json

import pytest

from starfish_cli.runtime.errors import StarfishError
from starfish_cli.reporting.summary import mean_std, summarize, write_summary


def fake_report(healer, seed, top1, dense=90.0, sparsity=0.75, pruner="wanda", seconds=1.0, labels=False,
                pruner_label=None, healer_label=None):
    return {
        "labels": {"pruner": pruner_label or pruner, "healer": healer_label or healer["name"]},
        "pruner": {"name": pruner, "pattern": "unstructured"},
        "sparsity": {"prunable": sparsity},
        "healer": healer, "seed": seed, "recovery": top1 / dense,
        "accuracy": {"dense": {"top1": dense}, "healed": {"top1": top1}},
        "calibration": {"labels_used": labels},
        "stages": {"heal": {"seconds": seconds}},
    }


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([5.0]) == (5.0, 0.0)


def test_summarize_groups_seeds_by_configuration():
    reports = [fake_report({"name": "starfish"}, s, t) for s, t in enumerate([80.0, 82.0, 84.0])]
    reports += [fake_report({"name": "kd"}, s, 70.0) for s in range(3)]
    reports += [fake_report({"name": "supervised"}, 0, 85.0, labels=True)]
    rows = summarize(reports)
    cells = rows[("wanda", "unstructured", 0.75)].cells
    assert cells["starfish"].top1 == pytest.approx((82.0, 2.0)) and cells["starfish"].seeds == [0, 1, 2]
    assert cells["kd"].top1 == pytest.approx((70.0, 0.0))
    assert cells["supervised"].labels_used and not cells["starfish"].labels_used
    assert cells["starfish"].recovery[0] == pytest.approx(82.0 / 90.0)


def test_seeds_of_one_target_share_a_row_whatever_sparsity_they_measure():
    reports = [fake_report({"name": "starfish"}, s, 80.0, sparsity=measured, pruner_label="wanda[allocation=owl]")
               for s, measured in enumerate([0.8994, 0.9004, 0.9])]
    for report in reports:
        report["pruner"]["sparsity"] = 0.9
    rows = summarize(reports)
    assert list(rows) == [("wanda[allocation=owl]", "unstructured", 0.9)]
    assert rows[("wanda[allocation=owl]", "unstructured", 0.9)].cells["starfish"].seeds == [0, 1, 2]
    n_m = fake_report({"name": "starfish"}, 0, 80.0, sparsity=0.5)
    n_m["pruner"].update(pattern="2:4", sparsity=None)
    assert list(summarize([n_m])) == [("wanda", "2:4", 0.5)]  # no target: as measured


def test_summarize_keeps_pruner_options_apart():
    row_reports = [fake_report({"name": "starfish"}, s, 80.0) for s in range(2)]
    layer_reports = [fake_report({"name": "starfish"}, s, 84.0, pruner_label="wanda[comparison=layer]")
                     for s in range(2)]
    rows = summarize(row_reports + layer_reports)
    assert rows[("wanda", "unstructured", 0.75)].cells["starfish"].top1[0] == pytest.approx(80.0)
    assert rows[("wanda[comparison=layer]", "unstructured", 0.75)].cells["starfish"].top1[0] \
        == pytest.approx(84.0)


def test_written_summary_keeps_option_labels_in_the_terminal_table(tmp_path, capsys):
    for seed in range(2):
        report = fake_report({"name": "starfish", "epochs": 30}, seed, 80.0 + seed,
                             pruner_label="wanda[comparison=layer]", healer_label="starfish[epochs=30]")
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(report))
    write_summary(tmp_path)
    printed = capsys.readouterr().out
    assert "wanda[comparison=layer]" in printed and "starfish[epochs=30]" in printed
    assert "wanda[comparison=layer]" in (tmp_path / "summary.md").read_text()


def test_old_reports_without_labels_get_plain_names():
    report = fake_report({"name": "kd", "epochs": 30}, 0, 70.0)
    del report["labels"]
    assert list(summarize([report]).values())[0].cells.keys() == {"kd"}


def test_one_seed_shows_no_spread(tmp_path):
    runs = {"one": [fake_report({"name": "kd"}, 0, 70.0)],
            "three": [fake_report({"name": "kd"}, s, 70.0 + s) for s in range(3)]}
    for name, reports in runs.items():
        for seed, report in enumerate(reports):
            (tmp_path / name / str(seed)).mkdir(parents=True)
            (tmp_path / name / str(seed) / "report.json").write_text(json.dumps(report))
        write_summary(tmp_path / name)
    assert "70.00 (0.778)" in (tmp_path / "one" / "summary.md").read_text()
    assert "± 0.00" not in (tmp_path / "one" / "summary.md").read_text()
    assert "71.00 ± 1.00 (0.789)" in (tmp_path / "three" / "summary.md").read_text()


def test_plots_give_each_healer_one_colour_and_one_shared_legend(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from starfish_cli.reporting import plots, summary

    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure))
    monkeypatch.setattr(plt, "close", lambda figure: None)
    reports = []
    for pruner in ("magnitude", "wanda"):  # two panels; kd is missing from the second
        for sparsity in (0.5, 0.9):
            healers = ("kd", "none", "starfish") if pruner == "magnitude" else ("none", "starfish")
            for seed in range(2):
                reports += [fake_report({"name": h, "epochs": 10}, seed, 60.0 + seed, sparsity=sparsity,
                                        pruner=pruner) for h in healers]
    rows = summarize(reports)
    summary.plot_accuracy_vs_sparsity(rows, tmp_path / "plot.png")
    (figure,) = figures
    colours = {}
    for axis in figure.axes:
        assert axis.get_legend() is None  # no per-panel legend
        for container in axis.containers:  # one errorbar series per healer
            colours.setdefault(container.get_label(), set()).add(tuple(container.lines[0].get_color()))
    assert set(colours) == {"kd", "none", "starfish"}
    assert all(len(found) == 1 for found in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == 3  # and the healers differ
    (legend,) = figure.legends
    assert sorted(text.get_text() for text in legend.get_texts()) == ["dense", "kd", "none", "starfish"]


def test_speed_from_reports_goes_into_the_table_and_a_trade_off_plot(tmp_path):
    for seed, (top1, ratio) in enumerate([(80.0, 1.9), (82.0, 2.1)]):
        report = fake_report({"name": "kd"}, seed, top1, pruner="structured", pruner_label="structured[heads=0.5]")
        report["sparsity"]["remaining_parameters"] = 600_000
        report["speed"] = {"batch_sizes": [1, 256], "models": {"healed": {"vs_dense": {"1": 1.1, "256": ratio}}}}
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(report))
    unmeasured = tmp_path / "u"
    unmeasured.mkdir()
    (unmeasured / "report.json").write_text(json.dumps(fake_report({"name": "kd"}, 0, 70.0)))
    written = write_summary(tmp_path)
    assert written["accuracy_vs_speed.png"].stat().st_size > 0
    text = written["summary.md"].read_text()
    assert "| structured[heads=0.5] | unstructured | 0.75 | kd | 81.00 ± 1.41 (0.900) | 2.00 ± 0.14 | 600,000 |" in text
    assert "| wanda | unstructured | 0.75 | kd |" not in text  # the unmeasured run has no speed row


def fake_lm_report(healer, seed, perplexity, dense=100.0):
    report = fake_report({"name": healer}, seed, 30.0, dense=40.0, sparsity=0.5)
    report["accuracy"] = {"dense": {"perplexity": dense, "top1": 40.0}, "healed": {"perplexity": perplexity, "top1": 30.0}}
    return report


def test_language_model_sweeps_compare_perplexity(tmp_path):
    reports = [fake_lm_report("starfish", s, p) for s, p in enumerate([110.0, 120.0])]
    reports += [fake_lm_report("none", s, 150.0) for s in range(2)]
    cells = summarize(reports)[("wanda", "unstructured", 0.5)].cells
    assert cells["starfish"].value == pytest.approx((115.0, 50 ** 0.5))
    assert cells["starfish"].ratio[0] == pytest.approx(1.15) and cells["none"].ratio[0] == pytest.approx(1.5)
    for index, report in enumerate(reports):
        (tmp_path / str(index)).mkdir()
        (tmp_path / str(index) / "report.json").write_text(json.dumps(report))
    write_summary(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "Healed perplexity" in summary and "115.00 ± 7.07 (1.150)" in summary and "150.00 ± 0.00 (1.500)" in summary
    assert "starfish:perplexity_mean" in (tmp_path / "summary.csv").read_text()


def test_a_folder_mixing_classifiers_and_language_models_is_refused():
    with pytest.raises(StarfishError, match="mixes classifier and language-model runs"):
        summarize([fake_report({"name": "kd"}, 0, 70.0), fake_lm_report("kd", 0, 120.0)])


def _write_reports(root, reports):
    for index, report in enumerate(reports):
        (root / str(index)).mkdir()
        (root / str(index) / "report.json").write_text(json.dumps(report))


def test_heal_time_goes_into_the_csv_and_a_recovery_vs_heal_time_plot(tmp_path, monkeypatch):
    import csv

    import matplotlib.pyplot as plt

    from starfish_cli.reporting import plots, summary

    reports = []  # 2 healers × 2 budgets × 2 seeds; seconds and top-1 rise with the budget
    for healer, base in (("kd", 5.0), ("starfish", 10.0)):
        for epochs in (10, 30):
            for seed in range(2):
                reports.append(fake_report({"name": healer, "epochs": epochs}, seed, 60.0 + epochs / 2 + seed,
                                           seconds=base * epochs / 10 + 2 * seed, healer_label=f"{healer}[epochs={epochs}]"))
    untimed = fake_report({"name": "starfish", "epochs": 10}, 2, 20.0, healer_label="starfish[epochs=10]")
    del untimed["stages"]  # left out of the time and the plotted recovery, kept in the table
    no_op = fake_report({"name": "none"}, 0, 50.0, seconds=2e-5)  # healer=none: a timed no-op
    no_op["healing"] = {"steps": 0}
    reports += [untimed, no_op]
    _write_reports(tmp_path, reports)
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.setdefault(path.name, figure))
    monkeypatch.setattr(plt, "close", lambda figure: None)
    written = summary.write_summary(tmp_path)

    assert "recovery_vs_heal_time.png" in written
    (line,) = csv.DictReader(written["summary.csv"].open())
    assert line["kd[epochs=10]:heal_seconds_mean"] == "6.00" and line["kd[epochs=30]:heal_seconds_mean"] == "16.00"
    assert line["starfish[epochs=10]:heal_seconds_mean"] == "11.00" and line["starfish[epochs=10]:seeds"] == "3"
    assert line["starfish[epochs=30]:heal_seconds_mean"] == "31.00" and line["none:heal_seconds_mean"] == ""
    assert line["starfish[epochs=30]:top1_mean"] == "75.5000"  # every label's own cells, not the last label's

    (axis,) = [axis for axis in figures["recovery_vs_heal_time.png"].axes if axis.get_visible()]
    points = {c.get_label(): tuple(c.lines[0].get_xydata()[0]) for c in axis.containers}
    assert set(points) == {"kd[epochs=10]", "kd[epochs=30]", "starfish[epochs=10]", "starfish[epochs=30]"}
    assert points["starfish[epochs=10]"] == pytest.approx((11.0, 65.5 / 90.0))  # the untimed seed is left out
    assert all(c.has_xerr and c.has_yerr for c in axis.containers)
    # each healer's two budgets joined, in order of time
    curves = sorted(list(line.get_xydata().ravel()) for line in axis.lines if line.get_linestyle() == "-")
    assert len(curves) == 2
    assert curves[0] == pytest.approx([6.0, 65.5 / 90, 16.0, 75.5 / 90])
    assert curves[1] == pytest.approx([11.0, 65.5 / 90, 31.0, 75.5 / 90])


def test_no_recovery_vs_heal_time_plot_without_heal_times(tmp_path):
    untimed = fake_report({"name": "kd"}, 0, 70.0)
    del untimed["stages"]
    _write_reports(tmp_path, [untimed, fake_report({"name": "none"}, 0, 60.0, seconds=0.0)])
    written = write_summary(tmp_path)
    assert "recovery_vs_heal_time.png" not in written and not (tmp_path / "recovery_vs_heal_time.png").exists()
    assert written["summary.csv"].read_text().splitlines()[1].endswith(",1,")  # none's heal seconds: empty


def test_healing_curves_average_each_healers_loss_over_seeds(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from starfish_cli.reporting import plots, summary

    reports = []
    for seed, history in enumerate([[4.0, 2.0, 1.0], [2.0, 1.0, 0.5]]):
        for sparsity in (0.5, 0.75):
            report = fake_report({"name": "kd"}, seed, 80.0, sparsity=sparsity)
            report["healing"] = {"steps": 3, "loss_history": history}
            reports.append(report)
    no_op = fake_report({"name": "none"}, 0, 50.0)  # healer=none: no loss to plot
    no_op["healing"] = {"steps": 0, "loss_history": []}
    reports.append(no_op)
    _write_reports(tmp_path, reports)
    assert summary.write_summary(tmp_path)["healing_curves.png"].read_bytes().startswith(b"\x89PNG")

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.setdefault(path.name, figure))
    monkeypatch.setattr(plt, "close", lambda figure: None)
    summary.write_summary(tmp_path)
    axes = [axis for axis in figures["healing_curves.png"].axes if axis.get_visible()]
    assert len(axes) == 2  # a panel per sparsity
    for axis in axes:
        (line,) = axis.lines  # kd only
        assert line.get_label() == "kd" and axis.get_yscale() == "log"
        assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == pytest.approx([3.0, 1.5, 0.75])


def test_no_healing_curves_without_loss_histories(tmp_path):
    _write_reports(tmp_path, [fake_report({"name": "kd"}, 0, 70.0)])
    assert "healing_curves.png" not in write_summary(tmp_path) and not (tmp_path / "healing_curves.png").exists()


def test_two_recipes_of_one_healer_are_two_budget_curves(tmp_path, monkeypatch):
    """The reference recipe and a tuned one (other lr and batch) at two budgets each: recovery_vs_time.png draws
    one curve per recipe, never one line through all four points."""
    import matplotlib.pyplot as plt

    from starfish_cli.reporting import plots, summary

    reports = []
    for recipe, options, seconds in (("", {}, 10.0), ("batch_size=8,", {"batch_size": 8}, 30.0)):
        for epochs in (10, 30):
            reports.append(fake_report({"name": "starfish", "epochs": epochs, **options}, 0, 60.0 + epochs / 2,
                                       seconds=seconds * epochs / 10,
                                       healer_label=f"starfish[{recipe}epochs={epochs}]"))
    _write_reports(tmp_path, reports)
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.setdefault(path.name, figure))
    monkeypatch.setattr(plt, "close", lambda figure: None)
    summary.write_summary(tmp_path)
    (axis,) = [axis for axis in figures["recovery_vs_time.png"].axes if axis.get_visible()]
    curves = {c.get_label(): list(c.lines[0].get_xdata()) for c in axis.containers}
    assert curves == {"starfish": [10.0, 30.0], "starfish[batch_size=8]": [30.0, 90.0]}
