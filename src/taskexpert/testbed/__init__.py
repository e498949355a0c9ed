"""The offline testbed: tiny tokenizer and Llama, LoRA bank, pool and target tasks.

Build with `build_testbed(out, preset, seed)` (or `taskexpert testbed build`), open a finished
build with `Testbed.load(out)`; the layout and testbed.json schema are in README.md here.
"""

from taskexpert.testbed.build import build_testbed, is_complete
from taskexpert.testbed.layout import Testbed
from taskexpert.testbed.presets import PRESETS, get_preset

__all__ = ["PRESETS", "Testbed", "build_testbed", "get_preset", "is_complete"]
