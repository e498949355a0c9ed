"""`taskexpert diverseevol`: the self-evolving diverse subset of Stage 4, with resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def main(
    base: Annotated[str, typer.Option("--base", help="Base model directory, or 'smollm2'.")],
    pool: Annotated[Path, typer.Option("--pool", help="Pool records (canonical JSONL).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (created; resumed if there).")],
    init: Annotated[int, typer.Option("--init", help="Random items trained in round 0.")] = 100,
    per_round: Annotated[int, typer.Option("--per-round", help="Items added per round.")] = 100,
    rounds: Annotated[
        int, typer.Option("--rounds", help="Rounds after round 0 (may grow on a rerun).")
    ] = 10,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="kcenter, random, least-confidence, margin, entropy or kcenter-oneshot.",
        ),
    ] = "kcenter",
    embed_layer: Annotated[
        str, typer.Option("--embed-layer", help="'last' or a hidden-state index (0: embeddings).")
    ] = "last",
    outlier_share: Annotated[
        float,
        typer.Option(
            "--outlier-share",
            help="K-center never picks this share of the pool: the rows farthest from a random "
            "sample of it (0: paper).",
        ),
    ] = 0.0,
    restart_from_base: Annotated[
        bool,
        typer.Option(
            "--restart-from-base/--continue",
            help="Train each round from the base model (paper), or keep training the last one.",
        ),
    ] = True,
    lora: Annotated[
        bool, typer.Option("--lora/--full", help="Train a LoRA (default) or every weight.")
    ] = True,
    eval_path: Annotated[
        Path | None, typer.Option("--eval", help="Records to report exact match on per round.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Round-0 draw, LoRA init, batches.")] = 0,
    epochs: Annotated[float, typer.Option("--epochs", help="Training epochs per round.")] = 3.0,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Learning rate (default: 2e-4 for a LoRA, 2e-5 for --full)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 16,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per example.")] = 512,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank.")] = 8,
    lora_alpha: Annotated[float, typer.Option("--lora-alpha", help="LoRA alpha.")] = 16.0,
    lora_targets: Annotated[
        str, typer.Option("--lora-targets", help="'all-linear' or comma-separated module names.")
    ] = "all-linear",
    eval_max_new_tokens: Annotated[
        int, typer.Option("--eval-max-new-tokens", help="Generation length for --eval.")
    ] = 64,
    embed_batch_size: Annotated[
        int, typer.Option("--embed-batch-size", help="Sequences per embedding/scoring batch.")
    ] = 32,
    checkpoint_every: Annotated[
        int,
        typer.Option("--checkpoint-every", help="Checkpoint training every N steps (0: off)."),
    ] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Torch CPU threads (default: torch's own choice)."),
    ] = None,
) -> None:
    """DiverseEvol: grow a training subset round by round by K-center on the model's own
    embeddings (or a baseline); every round's subset, model and summary go into --out."""
    from pydantic import ValidationError

    from taskexpert.errors import InputError
    from taskexpert.recipes.diverseevol import (
        DiverseEvolConfig,
        default_train_config,
        run_diverseevol,
    )
    from taskexpert.train import TrainConfig

    try:
        train = TrainConfig.model_validate(
            default_train_config().model_dump()
            | {
                "epochs": epochs,
                "lr": lr if lr is not None else (2e-4 if lora else 2e-5),
                "batch_size": batch_size,
                "max_length": max_length,
            }
        )
        config = DiverseEvolConfig(
            base=base,
            pool=pool,
            init=init,
            per_round=per_round,
            rounds=rounds,
            strategy=strategy,
            embed_layer=embed_layer,
            outlier_share=outlier_share,
            restart_from_base=restart_from_base,
            lora=lora,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            train=train,
            eval=eval_path,
            eval_max_new_tokens=eval_max_new_tokens,
            seed=seed,
            embed_batch_size=embed_batch_size,
            checkpoint_every=checkpoint_every,
            device=device,
            threads=threads,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else None
        raise InputError(error["msg"], field=option) from None
    result = run_diverseevol(config, out)
    typer.echo(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "resumed_after_rounds": result.resumed_from,
                "rounds": [
                    {
                        k: s.get(k)
                        for k in ("round", "size", "vendi", "exact_match", "seconds")
                        if k in s
                    }
                    for s in result.rounds
                ],
            },
            indent=2,
        )
    )
