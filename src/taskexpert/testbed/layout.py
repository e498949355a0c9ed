"""Where a built testbed keeps what, and `Testbed`, the handle other stages use to open it."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from taskexpert.errors import InputError

FORMAT_VERSION = 1  # the layout and testbed.json schema
TOKENIZER_DIR = "tokenizer"
BASE_DIR = "base"
BANK_DIR = "bank"
POOL_FILE = "pool.jsonl"
TASKS_DIR = "tasks"
CALIBRATION_DIR = "calibration"
BASELINES_DIR = "baselines"
BASELINES_FILE = "baselines.json"
TRUTH_FILE = "testbed.json"
STATE_DIR = ".build"
POOL_TRUTH_FILE = "pool_truth.json"  # in STATE_DIR: the pool's truth until testbed.json
# the build is a run directory (taskexpert.rundir, build_state.py): its identity, and the
# marker of its last phase, which is written only once every phase before it is finished
RUN_FILE = "run.json"
FINISHED_MARKER = ".steps/truth/COMPLETE.json"
LEGACY_MARKER = ".complete"  # the finished-build marker of the format before run.json


def _finished(root: Path) -> bool:
    """A finished build (cheap: the last phase's marker; `is_complete` checks every file)."""
    return (root / FINISHED_MARKER).is_file() or (root / LEGACY_MARKER).is_file()


def _recipe(root: Path) -> str | None:
    """The recipe id the build was made with (run.json, or the legacy marker)."""
    try:
        if (root / RUN_FILE).is_file():
            return json.loads((root / RUN_FILE).read_text())["identity"].get("recipe")
        return json.loads((root / LEGACY_MARKER).read_text()).get("recipe")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class Testbed:
    """A finished testbed directory and its ground truth (testbed.json)."""

    __test__ = False  # not a pytest test class, despite the name

    root: Path
    truth: dict

    @classmethod
    def load(cls, root: str | Path) -> Testbed:
        """Open a finished build; a half-built or foreign directory is an error, never used."""
        root = Path(root)
        if not _finished(root) or not (root / TRUTH_FILE).is_file():
            raise InputError("not a finished testbed build (run `taskexpert testbed build`)", root)
        try:
            truth = json.loads((root / TRUTH_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON ({exc.msg})", root / TRUTH_FILE, exc.lineno) from None
        testbed = cls(root=root, truth=truth)
        if not testbed.recipe_current:
            warnings.warn(
                f"{root}: built by an older testbed recipe; its numbers describe that recipe "
                "(rebuild with `taskexpert testbed build --force` for the current one)",
                stacklevel=2,
            )
        return testbed

    @property
    def recipe_current(self) -> bool:
        """False for a build made by an older recipe: still readable (to compare builds), but
        its numbers describe that recipe, so benchmarks report this and warn."""
        from taskexpert.testbed.presets import get_preset, recipe_id

        try:
            return _recipe(self.root) == recipe_id(get_preset(self.truth["build"]["preset"]))
        except (KeyError, InputError):
            return False

    @property
    def base_dir(self) -> Path:
        """Model and tokenizer: AutoModelForCausalLM / AutoTokenizer.from_pretrained(base_dir)."""
        return self.root / BASE_DIR

    @property
    def bank_dir(self) -> Path:
        return self.root / BANK_DIR

    @property
    def pool_path(self) -> Path:
        return self.root / POOL_FILE

    @property
    def targets(self) -> list[str]:
        return list(self.truth["targets"])

    @property
    def families(self) -> list[str]:
        return list(self.truth["families"])

    def kshot_path(self, target: str) -> Path:
        return self.root / self._target(target)["kshot"]

    def test_path(self, target: str) -> Path:
        return self.root / self._target(target)["test"]

    def calibration_path(self, family: str) -> Path:
        if family not in self.truth["families"]:
            raise InputError(f"unknown family {family!r}", self.root / TRUTH_FILE)
        return self.root / self.truth["families"][family]["calibration"]

    def adapter_dir(self, name: str) -> Path:
        if name not in self.truth["adapters"]:
            raise InputError(f"unknown adapter {name!r}", self.root / TRUTH_FILE)
        return self.bank_dir / name

    def adapter_names(self, kind: str | None = None) -> list[str]:
        """Bank adapters, optionally only those of one kind (expert, guesser, foreign, ...)."""
        return [n for n, a in self.truth["adapters"].items() if kind is None or a["kind"] == kind]

    def load_base(self):
        """(model, tokenizer) of the base model, in eval mode."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.base_dir))
        model = AutoModelForCausalLM.from_pretrained(str(self.base_dir))
        return model.eval(), tokenizer

    def _target(self, target: str) -> dict:
        if target not in self.truth["targets"]:
            known = ", ".join(self.truth["targets"])
            raise InputError(f"unknown target {target!r} (known: {known})", self.root / TRUTH_FILE)
        return self.truth["targets"][target]
