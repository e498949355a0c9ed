import numpy as np
import pytest

from taskexpert.verdict import LABELS, Verdict, bootstrap_interval, decide, table

TOL = 1e-12  # float comparisons of means computed two ways


def _runs(rate: float, n_items: int, seeds: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [(rng.random(n_items) < rate).astype(float).tolist() for _ in range(seeds)]


def test_identical_methods_are_within_noise():
    runs = _runs(0.5, 100, 3, 0)
    verdict = decide({"moe": runs, "plain_lora": [list(r) for r in runs]})
    comparison = verdict.comparison
    assert comparison is not None and comparison.within_noise
    assert abs(comparison.diff) < TOL
    assert comparison.low <= 0.0 <= comparison.high
    assert comparison.sentence.startswith("the mixture is within noise of the plain LoRA")
    assert "difference +0.000, 95% interval" in comparison.sentence
    assert verdict.sentence == comparison.sentence


def test_a_clearly_better_method_beats_with_an_interval_excluding_zero():
    verdict = decide({"moe": _runs(0.9, 100, 3, 1), "plain_lora": _runs(0.3, 100, 3, 2)})
    comparison = verdict.comparison
    assert verdict.winner == "moe" and [m.method for m in verdict.methods] == ["moe", "plain_lora"]
    assert not comparison.within_noise and comparison.low > 0.3
    assert comparison.low <= comparison.diff <= comparison.high
    expected = (
        f"the mixture beats the plain LoRA by {comparison.diff:.3f} "
        f"(95% interval {comparison.low:.3f} to {comparison.high:.3f})"
    )
    assert comparison.sentence == expected


def test_a_worse_mixture_is_reported_as_the_baseline_winning():
    verdict = decide({"moe": _runs(0.3, 100, 3, 1), "plain_lora": _runs(0.9, 100, 3, 2)})
    comparison = verdict.comparison
    assert verdict.winner == "plain_lora" and comparison.diff < 0
    assert comparison.sentence == (
        f"the plain LoRA beats the mixture by {-comparison.diff:.3f} "
        f"(95% interval {-comparison.high:.3f} to {-comparison.low:.3f})"
    )


def test_same_seed_same_verdict_other_seed_other_interval():
    scores = {"moe": _runs(0.6, 80, 3, 3), "plain_lora": _runs(0.5, 80, 3, 4)}
    one, two = decide(scores, seed=7), decide(scores, seed=7)
    assert one.model_dump() == two.model_dump()
    assert decide(scores, seed=8).model_dump() != one.model_dump()  # the draw does matter


def test_the_interval_contains_the_mean_and_per_seed_means_are_right():
    runs = _runs(0.4, 50, 4, 5)
    verdict = decide({"moe": runs, "base": [runs[0]]})
    for row in verdict.methods:
        assert row.low <= row.mean <= row.high
        assert row.n_items == 50
    moe = next(m for m in verdict.methods if m.method == "moe")
    assert len(moe.per_seed) == 4
    assert abs(moe.per_seed[2] - np.mean(runs[2])) < TOL
    assert abs(moe.mean - np.mean(runs)) < TOL


def test_seed_spread_widens_the_interval():
    """Same items, same overall mean: seeds that disagree give a wider interval than
    seeds that agree, because seeds are resampled too."""
    rng = np.random.default_rng(0)
    base = rng.random(60)
    steady = [base.tolist()] * 3
    spread = [np.clip(base + shift, 0, 1).tolist() for shift in (-0.3, 0.0, 0.3)]
    v_steady = decide({"moe": steady}, resamples=3000)
    v_spread = decide({"moe": spread}, resamples=3000)
    steady_width = v_steady.methods[0].high - v_steady.methods[0].low
    spread_width = v_spread.methods[0].high - v_spread.methods[0].low
    assert abs(v_steady.methods[0].mean - v_spread.methods[0].mean) < 0.02
    assert spread_width > 2 * steady_width


def test_runs_of_different_lengths_raise():
    with pytest.raises(ValueError, match="same test items"):
        decide({"moe": [[1, 0, 1]], "plain_lora": [[1, 0, 1], [1, 0]]})
    with pytest.raises(ValueError, match="no runs"):
        decide({"moe": []})


def test_few_items_and_single_seeds_warn():
    verdict = decide({"moe": [[1, 0] * 5], "base": [[0, 1] * 5]})
    assert any(
        w.startswith("10 test items are too few to separate methods") for w in verdict.warnings
    )
    single = [w for w in verdict.warnings if "one seed only" in w]
    assert len(single) == 1 and "the mixture" in single[0] and "base model" not in single[0]
    enough = decide({"moe": _runs(0.5, 40, 2, 0), "base": _runs(0.5, 40, 1, 1)})
    assert enough.warnings == []


def test_without_the_compared_pair_the_sentence_names_the_winner():
    verdict = decide({"base": _runs(0.2, 100, 1, 0), "best_adapter": _runs(0.9, 100, 1, 1)})
    assert verdict.comparison is None and verdict.winner == "best_adapter"
    assert verdict.sentence.startswith("the best bank adapter scores best")
    assert "beats the base model" in verdict.sentence


def test_json_round_trip_and_table():
    verdict = decide(
        {"moe": _runs(0.7, 40, 3, 0), "plain_lora": _runs(0.6, 40, 3, 1), "odd": [[0.5] * 40]}
    )
    again = Verdict.model_validate_json(verdict.model_dump_json())
    assert again == verdict
    assert Verdict.model_validate(verdict.model_dump()) == verdict
    text = table(verdict)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["method", "mean"]
    assert any(line.startswith(LABELS["moe"]) for line in lines)
    assert any(line.startswith("odd") for line in lines)  # unknown names shown as is
    assert verdict.sentence in lines
    assert "warning: one seed only for odd" in text


def test_a_reference_is_shown_never_wins_and_flags_a_winner_it_matches():
    """A floor (the K-shot's commonest answer) that beats every method is still no winner;
    the sentence says the winner does not clear it, and the table shows it apart."""
    always_yes = [1.0] * 62 + [0.0] * 38
    verdict = decide(
        {"moe": _runs(0.6, 100, 2, 1), "plain_lora": _runs(0.55, 100, 2, 2)},
        references={"majority": (always_yes, 'always "yes" (31 of 50 K-shot answers)')},
    )
    assert verdict.winner in ("moe", "plain_lora")
    assert [r.method for r in verdict.references] == ["majority"]
    assert abs(verdict.references[0].mean - 0.62) < TOL
    assert verdict.floor is not None and verdict.floor.baseline == "majority"
    assert verdict.floor.low <= 0.0
    assert verdict.sentence.endswith(
        "; no method clears the K-shot's commonest answer "
        '(always "yes" (31 of 50 K-shot answers), 0.620) beyond noise'
    )
    assert not any("one seed only" in w for w in verdict.warnings)
    rendered = table(verdict)
    assert 'reference: always "yes" (31 of 50 K-shot answers)  0.620' in rendered
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict


def test_a_winner_clear_of_the_reference_leaves_the_sentence_alone():
    plain = decide({"moe": _runs(0.9, 100, 3, 1), "plain_lora": _runs(0.3, 100, 3, 2)})
    floored = decide(
        {"moe": _runs(0.9, 100, 3, 1), "plain_lora": _runs(0.3, 100, 3, 2)},
        references={"majority": ([1.0] * 30 + [0.0] * 70, "always A")},
    )
    assert floored.sentence == plain.sentence
    assert floored.floor is not None and floored.floor.low > 0.0
    # the methods' intervals come from the same replicates with or without the reference
    assert [m.mean for m in floored.methods] == [m.mean for m in plain.methods]


def test_a_reference_must_cover_the_same_items_and_not_shadow_a_method():
    runs = {"moe": _runs(0.5, 50, 2, 0)}
    with pytest.raises(ValueError, match="scored 49 test items"):
        decide(runs, references={"majority": ([1.0] * 49, "x")})
    with pytest.raises(ValueError, match="both a method and a reference"):
        decide(runs, references={"moe": ([1.0] * 50, "x")})


def test_an_old_verdict_without_references_still_loads():
    old = decide({"moe": _runs(0.5, 40, 2, 0)}).model_dump(mode="json")
    del old["references"], old["floor"], old["versus_base"], old["cautions"]
    loaded = Verdict.model_validate(old)
    assert loaded.references == [] and loaded.versus_base is None and loaded.cautions == []


def _near_tie() -> dict[str, list[list[float]]]:
    """Base, a merge two items of 150 above it (three gained, one lost: noise), and a mixture
    far below; simplest first."""
    base = _runs(0.33, 150, 1, 5)
    merge = [list(base[0])]
    wrong = [i for i, v in enumerate(base[0]) if v == 0.0]
    right = [i for i, v in enumerate(base[0]) if v == 1.0]
    for i in wrong[:3]:
        merge[0][i] = 1.0
    merge[0][right[0]] = 0.0
    return {"base": base, "uniform_merge": merge, "moe": _runs(0.2, 150, 2, 6)}


def test_a_winner_within_noise_of_the_base_model_is_cautioned():
    """The ARC-Easy case: the winner tops the table by a point the items cannot resolve, so
    the run says the untrained model does as well as far as this test set can tell."""
    verdict = decide(_near_tie())
    against = verdict.versus_base
    assert verdict.winner == "uniform_merge" and against is not None
    assert (against.method, against.baseline) == ("uniform_merge", "base")
    assert against.within_noise and not against.beats
    assert abs(against.diff - 2 / 150) < TOL
    assert verdict.cautions == [
        f"the winner is not shown to improve on the base model: {against.sentence}"
    ]
    assert f"caution: {verdict.cautions[0]}" in table(verdict).splitlines()


def test_a_winner_clear_of_the_base_and_the_floor_has_no_caution():
    verdict = decide(
        {"base": _runs(0.3, 100, 1, 1), "moe": _runs(0.9, 100, 3, 2)},
        references={"majority": ([1.0] * 30 + [0.0] * 70, "always A")},
    )
    assert verdict.versus_base is not None and verdict.versus_base.low > 0.0
    assert verdict.cautions == [] and "caution:" not in table(verdict)


def test_no_base_comparison_when_the_base_wins_or_is_not_scored():
    won = decide({"base": _runs(0.9, 100, 1, 1), "moe": _runs(0.3, 100, 2, 2)})
    assert won.winner == "base" and won.versus_base is None and won.cautions == []
    absent = decide({"moe": _runs(0.6, 100, 2, 1), "plain_lora": _runs(0.5, 100, 2, 2)})
    assert absent.versus_base is None


def test_a_winner_under_the_floor_is_cautioned_with_the_paired_difference():
    always_yes = [1.0] * 62 + [0.0] * 38
    verdict = decide(
        {"base": _runs(0.5, 100, 1, 3), "moe": _runs(0.9, 100, 2, 4)},
        references={"majority": (always_yes, "always yes")},
    )
    assert verdict.floor is not None and verdict.floor.low > 0.0 and verdict.cautions == []
    under = decide(
        {"base": _runs(0.3, 100, 1, 3), "moe": _runs(0.6, 100, 2, 4)},
        references={"majority": (always_yes, "always yes")},
    )
    assert under.floor is not None and under.floor.low <= 0.0
    assert under.cautions[-1] == (
        f"the winner does not clear the model-free floor beyond noise: {under.floor.sentence}"
    )


def test_a_floor_scored_alone_gets_the_interval_its_verdict_gives_it():
    rng = np.random.default_rng(3)
    floor = (rng.random(120) < 0.3).astype(float).tolist()
    runs = {
        "moe": [(rng.random(120) < 0.5).astype(float).tolist() for _ in range(2)],
        "plain_lora": [(rng.random(120) < 0.4).astype(float).tolist() for _ in range(3)],
    }
    verdict = decide(runs, references={"majority": (floor, "always A")}, resamples=500, seed=7)
    (row,) = verdict.references
    low, high = bootstrap_interval(floor, resamples=500, seed=7)
    assert (low, high) == pytest.approx((row.low, row.high), abs=1e-12)
    assert low < row.mean < high


def test_the_simplest_rule_keeps_the_base_model_when_the_top_is_within_noise_of_it():
    best = decide(_near_tie())
    simplest = decide(_near_tie(), winner_rule="simplest")
    assert best.winner == "uniform_merge" and best.winner_rule == "best"
    assert simplest.winner == "base" and simplest.winner_rule == "simplest"
    assert [m.method for m in simplest.methods] == [m.method for m in best.methods]  # same table
    assert simplest.versus_base is None and simplest.cautions == []
    back = best.versus_base  # the merge against the base: the same paired replicates
    assert back is not None and back.within_noise
    assert simplest.sentence == (
        f"{best.sentence}; the winner is the base model, the simplest method within noise of "
        f"the best (the base model is within noise of the uniform merge (difference "
        f"{-back.diff:+.3f}, 95% interval {-back.high:.3f} to {-back.low:.3f}))"
    )


def test_the_simplest_rule_keeps_a_top_method_that_beats_the_simpler_ones():
    scores = {"base": _runs(0.3, 100, 1, 1), "plain_lora": _runs(0.5, 100, 2, 2),
              "moe": _runs(0.9, 100, 2, 3)}  # fmt: skip
    verdict = decide(scores, winner_rule="simplest")
    assert verdict.winner == "moe" and verdict.sentence == decide(scores).sentence


def _items(n: int, *ranges: range) -> list[float]:
    hits = {i for r in ranges for i in r}
    return [1.0 if i in hits else 0.0 for i in range(n)]


def test_under_the_simplest_rule_the_floor_sentence_is_the_tops_and_the_caution_the_winners():
    """The top (0.38) clears the floor (0.30) beyond noise, the base (0.33) does not, and the
    top is within noise of the base: the base wins under `simplest`, the sentence does not
    claim that no method clears the floor, and the caution says the winner does not."""
    floor = _items(200, range(0, 60))
    base = _items(200, range(0, 50), range(60, 76))
    top = _items(200, range(0, 50), range(100, 126))
    scores = {"base": [base], "moe": [top, top]}
    references = {"majority": (floor, "always A")}
    best = decide(scores, references=references)
    simplest = decide(scores, references=references, winner_rule="simplest")
    assert best.winner == "moe" and best.floor is not None and best.floor.low > 0.0
    assert best.versus_base is not None and best.versus_base.within_noise
    assert simplest.winner == "base"
    assert simplest.floor is not None and simplest.floor.low <= 0.0
    assert "no method clears" not in simplest.sentence
    assert simplest.cautions == [
        f"the winner does not clear the model-free floor beyond noise: {simplest.floor.sentence}"
    ]


def test_an_unknown_winner_rule_is_refused():
    with pytest.raises(ValueError, match="winner_rule"):
        decide(_near_tie(), winner_rule="luckiest")
