"""Data selection: retrieval, near-duplicate removal, K-center greedy, Vendi score, DiverseEvol."""

from taskexpert.selection.kcenter import kcenter_greedy as kcenter_greedy
from taskexpert.selection.vendi import vendi_score as vendi_score
