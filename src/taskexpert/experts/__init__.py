"""Expert selection from a LoRA bank: scoring, diversity, group choice (DESIGN.md Stage 1)."""
