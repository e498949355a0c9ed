"""A testbed build with some preset settings changed, for trying recipes (issue 19 item 1).

    .venv/bin/python benchmarks/bench_testbed_recipe.py --out runs/tb/p6k-s1 --seed 1 \
        --set pretrain.max_steps=6000 --set pretrain_records=192000
    .venv/bin/python benchmarks/bench_testbed_calibration.py --testbed runs/tb/p6k-s1 --problems 100

Builds into --out with `build_testbed` (resumable like any build; the changed preset has its own
recipe id, so a stock build in the same directory is refused, never reused) and prints one
JSON line: the changes, the build's own calibration (testbed.json) and the limits it misses.
The recipe trials of the testbed README (adapters 400 steps, pretraining 6,000 steps, hidden
192) were built this way. The changes are applied when this file is imported, so the bank's
worker processes, which import it again (multiprocessing spawn passes them this sys.argv),
build with them too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from taskexpert.testbed import presets


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def changed(model: BaseModel, path: list[str], value) -> BaseModel:
    """`model` with the dotted field `path` set to `value` (a copy; unknown fields refused)."""
    name = path[0]
    if name not in type(model).model_fields:
        sys.exit(f"--set: {type(model).__name__} has no field {name!r}")
    if len(path) > 1:
        value = changed(getattr(model, name), path[1:], value)
    return model.model_copy(update={name: value})


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the build directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="standard")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="a preset field, dotted into nested ones (pretrain.max_steps=6000, model.hidden=192)",
    )  # fmt: skip
    return parser


def changes(args: argparse.Namespace) -> dict[str, object]:
    """The --set changes, values parsed as JSON where they are (numbers, true/false)."""
    sets = {}
    for item in args.set:
        key, _, text = item.partition("=")
        sets[key] = _value(text)
    return sets


# applied at import (module docstring): here and in every bank worker
_ARGS, _ = parser().parse_known_args(sys.argv[1:])
if _ARGS.preset in presets.PRESETS:
    for key, value in changes(_ARGS).items():
        presets.PRESETS[_ARGS.preset] = changed(
            presets.PRESETS[_ARGS.preset], key.split("."), value
        )


def main() -> None:
    args = parser().parse_args()
    from taskexpert.testbed.baselines import calibration_misses
    from taskexpert.testbed.build import build_testbed

    build = build_testbed(args.out, args.preset, seed=args.seed, progress=False)
    print(json.dumps({
        "benchmark": "testbed_recipe", "preset": args.preset, "seed": args.seed,
        "changes": changes(args), "out": str(args.out),
        "calibration": build.truth["calibration"], "misses": calibration_misses(build.truth),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
