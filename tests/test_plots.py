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
