"""Data selection algorithms: retrieval, near-duplicate removal, K-center greedy, Vendi score,
uncertainty, outliers. Runs built on them (DiverseEvol) are in `taskexpert.recipes`."""

from taskexpert.selection.kcenter import kcenter_greedy as kcenter_greedy
from taskexpert.selection.vendi import vendi_score as vendi_score
