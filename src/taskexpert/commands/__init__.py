"""CLI verbs, one module each; every module exposes `main` (a typer command function)."""
