"""Data selection: retrieval, near-duplicate removal, K-center greedy, Vendi score, DiverseEvol."""
