"""Scale-out on Ray (docs/design.md "Scale-out"): embedding shards, sharded K-center, retrieval
and dedup whose picks equal the single-process ones. Imported only when `--ray` is given."""
