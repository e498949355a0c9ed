"""Expert selection from a LoRA bank: scoring, diversity, group choice (docs/design.md Stage 1)."""
