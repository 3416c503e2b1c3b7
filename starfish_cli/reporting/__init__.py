"""Run reports (report.json / report.md / the terminal table) and sweep summaries with plots."""
