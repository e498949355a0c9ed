"""Stage 1's settings, in a module of their own so the CLI can read them without torch.

`ExpertSelectionConfig` is re-exported by `taskexpert.experts.select`, where it is used.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from taskexpert.configs import Cli

if TYPE_CHECKING:
    from taskexpert.experts.grouping import GroupingConfig
    from taskexpert.experts.scoring import ScoringConfig

GROUPING_NAMES = {"objective": "group_objective"}  # GroupingConfig's name -> ours

# Named rules: the settings a rule changes from the defaults (the default rule, "family", is
# the fields' own defaults). "paper" is Paper A's rule, kept for comparison: no base-model
# perplexity filter, no family or guesser test, the most diverse near-best group.
RULES: dict[str, dict[str, object]] = {
    "family": {},
    "paper": {
        "group_objective": "diversity",
        "drop_above_base_perplexity": False,
        "drop_unsupported": False,
        "one_per_family": False,
    },
}


class ExpertSelectionConfig(BaseModel):
    """Every knob of Stage 1 with its default (paper: N=4, EM rank + reasoning-PPL rank).

    The single source of these settings: taskexpert.configs makes each field a select-experts
    option (its description the help) and a key of its config file; `grouping()` and
    `scoring()` hand them to the group choice and the scorer by name.
    """

    model_config = ConfigDict(extra="forbid")

    rule: Literal["family", "paper"] = Field(
        "family",
        description="family (default: one adapter per family, no guessers) or paper (Paper A's "
        "rule, for comparison); settings given beside it win over the rule's.",
    )
    n: int = Field(4, ge=1, description="Experts in the group (paper: 4).")
    m: int | None = Field(None, ge=1, description="Candidates kept by quality (default: 2N).")
    tolerance: float = Field(
        0.1,
        ge=0,
        description="Quality slack (0..1) within which the most diverse group wins.",
    )
    em_weight: float = Field(1.0, ge=0, description="Weight of the EM rank.")
    perplexity_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the perplexity rank (0: EM only).",
    )
    perplexity: Literal["rppl", "ppl"] = Field(
        "rppl", description="rppl (reasoning, paper) or ppl (bare answer)."
    )
    rppl_variant: Literal["paper", "relative", "contrast", "content"] = Field(
        "paper",
        description="paper, relative (vs base), contrast (vs another item's rationale), content.",
    )
    report_variants: bool = Field(False, description="Also compute and record every RPPL variant.")
    similarity: Literal["delta", "factors"] = Field(
        "delta", description="delta (exact cos of B·A) or factors (paper's A/B cosines)."
    )
    diversity: Annotated[bool, Cli(help="Plain top-N by quality.")] = Field(
        True,
        description="Choose among near-best groups by diversity (false: plain top-N by quality).",
    )
    group_objective: Literal["diversity", "coverage"] = Field(
        "coverage",
        description="diversity (paper: most diverse near-best group) or coverage (lowest "
        "reasoning perplexity when each token goes to the member that predicts it best).",
    )
    coverage_tolerance: float = Field(
        0.02,
        ge=0,
        description="With coverage: groups within this relative slack of the lowest routed "
        "perplexity qualify, and the least similar wins.",
    )
    shrink: bool = Field(
        False,
        description="With coverage: the smallest group within the slack of the best N-group, "
        "so a member the router would hardly use is left out (N becomes a ceiling).",
    )
    drop_below_base: Annotated[
        bool,
        Cli(flag="--keep-below-base", help="Keep adapters whose EM is below the base model's."),
    ] = Field(
        True,
        description="Drop adapters whose EM is below the base model's.",
    )
    drop_above_base_perplexity: bool = Field(
        True,
        description="Drop adapters whose (reasoning) perplexity is above the base model's "
        "(the answer-only guesser).",
    )
    when_none_pass: Literal["lift", "fail"] = Field(
        "lift",
        description="When the base-model comparisons (EM below, perplexity above the base's) "
        "drop every adapter: lift them with a warning, so the group is the best of the rest "
        "and a run's verdict measures whether it helps (lift), or stop with an error (fail).",
    )
    drop_unsupported: bool = Field(
        True,
        description="Drop adapters whose right K-shot answers come with rationales matching "
        "the worked ones less than the best adapter's by more than --rationale-match-margin "
        "(the format-mimic guesser).",
    )
    rationale_match_margin: float = Field(
        0.05, ge=0, description="Slack (0..1 text similarity) of --drop-unsupported."
    )
    one_per_family: bool = Field(
        True,
        description="At most one adapter per family (the better-scored stays): same family "
        "when their generations on the K-shot are --family-generation-similarity alike, "
        "their centered weight similarity reaches --family-weight-similarity (trained on one "
        "task) or their weight similarity reaches --max-pair-similarity (a copy or rescaled "
        "copy).",
    )
    family_generation_similarity: float = Field(
        0.9, ge=0, le=1, description="Generation similarity (0..1) that makes one family."
    )
    family_weight_similarity: float | None = Field(
        0.045,
        description="Centered weight similarity (cosine of the updates net of the bank's mean "
        "update; needs 5 adapters) that makes one family; 1 turns the test off. Nine testbed "
        "banks: separately trained twins 0.046-0.26, unrelated adapters at most 0.051; the "
        "rule right on all 32 of their targets at 0.04-0.045.",
    )
    drop_ungrounded: bool = Field(
        False,
        description="Drop adapters whose rationales depend on the question less than the base "
        "model's (contrast score above the base's by more than --grounding-tolerance): the "
        "format-mimic, which plain reasoning perplexity misses.",
    )
    grounding_tolerance: float = Field(
        0.05, ge=0, description="Relative slack of --drop-ungrounded."
    )
    max_pair_similarity: float | None = Field(
        0.9,
        description="Near-duplicate threshold (1 turns the rule off).",
    )
    batch_size: int = Field(16, ge=1, description="Examples per forward pass.")
    max_kshot: int | None = Field(
        None,
        ge=2,
        description="Score on at most this many K-shot items, evenly spaced (default: all). "
        "Scoring is one generation and one NLL pass per item and adapter: 50 items with "
        "rationales over a 16-adapter SmolLM2 bank is over 30 min on 2 CPU cores.",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Generation length (default: from the K-shot targets)."
    )
    # config file only
    exhaustive_limit: Annotated[int, Cli(option=False)] = Field(
        200_000, ge=1, description="Largest C(M, N) enumerated; greedy beyond."
    )
    max_length: Annotated[int, Cli(option=False)] = Field(
        1024,
        ge=8,
        description="Longest prompt (and prompt + target) in tokens; longer are truncated.",
    )
    use_chat_template: Annotated[bool | None, Cli(option=False)] = Field(
        None, description="Wrap prompts in the tokenizer's chat template (default: if it has one)."
    )
    # set by the program (--quiet), not a setting
    progress: Annotated[bool, Cli(option=False, file=False)] = True

    @model_validator(mode="before")
    @classmethod
    def _apply_rule(cls, data):
        """A named rule fills the settings it changes unless they are given beside it."""
        if isinstance(data, dict) and data.get("rule") in RULES:
            data = {**RULES[data["rule"]], **data}
        return data

    @field_validator("max_pair_similarity", "family_weight_similarity")
    @classmethod
    def _one_turns_off(cls, value: float | None) -> float | None:
        """A threshold of 1 or more can never be passed: the rule is off (None)."""
        return None if value is not None and value >= 1 else value

    @property
    def needs_contrast(self) -> bool:
        """Whether the choice depends on the contrast score (K-shot rationales needed)."""
        return self.drop_ungrounded or (
            self.perplexity == "rppl" and self.rppl_variant == "contrast"
        )

    def scoring(self) -> ScoringConfig:
        from taskexpert.experts.scoring import PASS_VARIANTS, RPPL_VARIANTS, ScoringConfig

        wanted = set(RPPL_VARIANTS) if self.report_variants else {self.rppl_variant}
        if self.drop_ungrounded:
            wanted.add("contrast")
        return ScoringConfig(
            variants=tuple(v for v in PASS_VARIANTS if v in wanted),
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            max_length=self.max_length,
            use_chat_template=self.use_chat_template,
        )

    def grouping(self) -> GroupingConfig:
        """GroupingConfig's fields, by name (`objective` is `group_objective` here)."""
        from taskexpert.experts.grouping import GroupingConfig

        named = {f.name: GROUPING_NAMES.get(f.name, f.name) for f in fields(GroupingConfig)}
        return GroupingConfig(**{key: getattr(self, name) for key, name in named.items()})
