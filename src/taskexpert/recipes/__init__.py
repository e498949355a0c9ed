"""Recipes compose the library into runs (torchtune-style): each owns one run directory
(`taskexpert.rundir`), its resume and its artifacts, and has one entry function; the
algorithms they call stay in the library packages (`selection/`, `moe/`, ...)."""
