"""Mixture of LoRA experts: config, layer, attach/save/load (DESIGN.md Stage 3)."""
