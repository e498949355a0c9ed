"""The run report: `collect` reads a run directory, `sections` says what to show, `plots` draws
it and `render` writes HTML and Markdown. `recipes.report.run_report` composes them."""
