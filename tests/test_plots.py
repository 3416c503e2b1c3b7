from starfish_cli.reporting.plots import budget_group, panel_title


def test_long_panel_titles_break_after_commas_and_spaces_and_short_ones_stay():
    title = "structured[compensate=least_squares,criterion=output] (heads+neurons) at sparsity 0.50"
    lines = panel_title(title).splitlines()
    assert len(lines) > 1 and all(len(line) <= 45 for line in lines)
    assert "".join(line if line.endswith(",") else line + " " for line in lines).strip() == title  # nothing lost
    assert panel_title("wanda (unstructured), dense 88.6%") == "wanda (unstructured), dense 88.6%"


def test_a_budget_curve_joins_the_epochs_of_one_recipe_only():
    assert budget_group("starfish[epochs=30,recipe=reference]") == budget_group("starfish[recipe=reference]")
    assert budget_group("starfish[epochs=30]") == "starfish" != budget_group("starfish[recipe=reference]")


def test_heal_time_axes_label_their_ticks_in_plain_numbers(tmp_path):
    """A panel of 14.2-15.5 s, less than a decade: its tick labels are plain numbers, never 1.42×10¹."""
    from starfish_cli.reporting.plots import _pyplot, _time_panel
    from starfish_cli.reporting.rows import TOP1

    plt = _pyplot()
    figure, axis = plt.subplots()
    axis.plot([14.2, 15.5], [0.96, 0.97])
    _time_panel(axis, ("structured", "heads+neurons", 0.5), TOP1)
    figure.canvas.draw()
    shown = [label.get_text() for label in axis.get_xticklabels(minor=True) + axis.get_xticklabels() if label.get_text()]
    plt.close(figure)
    assert "14.2" in shown and not any("times" in text or "^" in text for text in shown), shown
