import numpy as np
import pytest
import torch
from expert_helpers import memory_adapter

from taskexpert.bank import LoraAdapter, LoraModule
from taskexpert.experts.diversity import (
    MIN_CENTERED,
    _module_delta_gram,
    delta_cosine,
    similarity_matrix,
)


def dense_delta(module):
    return module.scaling * module.B.double() @ module.A.double()


def dense_similarity(a, b):
    """The definition, computed the slow way: mean over shared modules of |cos| of dense dW."""
    shared = sorted(set(a.modules) & set(b.modules))
    if not shared:
        return 0.0
    values = []
    for name in shared:
        x, y = (dense_delta(m.modules[name]).flatten() for m in (a, b))
        values.append(abs(float(x @ y / (x.norm() * y.norm()))))
    return float(np.mean(values))


@pytest.fixture()
def adapters():
    return [
        memory_adapter("a", {"q": (4, 12, 10), "v": (2, 12, 6)}, seed=1),
        memory_adapter("b", {"q": (3, 12, 10), "v": (5, 12, 6)}, seed=2, alpha=3.0),
        memory_adapter("c", {"q": (1, 12, 10), "o": (4, 8, 8)}, seed=3),
        memory_adapter("d", {"o": (2, 8, 8)}, seed=4),
    ]


def test_delta_similarity_matches_the_dense_computation(adapters):
    result = similarity_matrix(adapters)
    for i, a in enumerate(adapters):
        for j, b in enumerate(adapters):
            expected = 1.0 if i == j else dense_similarity(a, b)
            assert result.matrix[i, j] == pytest.approx(expected, abs=1e-10)
    # a and d share no module: nothing in common, similarity 0
    assert result("a", "d") == 0.0 and result.shared_modules[0, 3] == 0
    assert result.shared_modules[0, 1] == 2


def test_chunked_gram_equals_one_block(adapters):
    modules = [
        memory_adapter(str(s), {"q": (s % 3 + 1, 9, 7)}, seed=s).modules["q"] for s in range(7)
    ]
    assert np.allclose(_module_delta_gram(modules, chunk=2), _module_delta_gram(modules))


def test_delta_similarity_is_invariant_to_refactoring_but_the_paper_variant_is_not():
    a = memory_adapter("a", {"q": (4, 12, 10), "v": (4, 12, 6)}, seed=1)
    b = memory_adapter("b", {"q": (4, 12, 10), "v": (4, 12, 6)}, seed=2)
    refactored = memory_adapter("a2", {}, seed=0)
    generator = torch.Generator().manual_seed(5)
    for name, module in a.modules.items():
        Q = torch.randn(4, 4, generator=generator) + 3 * torch.eye(4)
        A2, B2 = torch.linalg.solve(Q, module.A), module.B @ Q
        refactored.modules[name] = LoraModule(A2, B2, module.alpha, module.scaling)
        assert torch.allclose(
            refactored.modules[name].delta_weight(), module.delta_weight(), atol=1e-4
        )
    delta = similarity_matrix([a, b, refactored])
    assert delta("a", "a2") == pytest.approx(1.0, abs=1e-6)
    assert delta("b", "a2") == pytest.approx(delta("a", "b"), abs=1e-6)
    factors = similarity_matrix([a, b, refactored], method="factors")
    assert factors("a", "a2") < 1.9  # the same update, but the factors look different


def test_paper_variant_sums_factor_cosines_and_pads_ranks():
    a = memory_adapter("a", {"q": (3, 6, 5)}, seed=1)
    b = memory_adapter("b", {"q": (3, 6, 5)}, seed=2)
    c = memory_adapter("c", {"q": (2, 6, 5)}, seed=3)
    result = similarity_matrix([a, b, c], method="factors")
    qa, qb, qc = a.modules["q"], b.modules["q"], c.modules["q"]

    def cos(x, y):
        return abs(float(x.flatten() @ y.flatten() / (x.norm() * y.norm())))

    assert result("a", "b") == pytest.approx(cos(qa.A, qb.A) + cos(qa.B, qb.B), abs=1e-6)
    # rank 2 vs rank 3: the smaller factors are zero-padded along the rank
    padded_a = torch.cat([qc.A, torch.zeros(1, 6)])
    padded_b = torch.cat([qc.B, torch.zeros(5, 1)], dim=1)
    assert result("a", "c") == pytest.approx(cos(qa.A, padded_a) + cos(qa.B, padded_b), abs=1e-6)
    assert result.matrix[0, 0] == 2.0


def test_zero_update_has_similarity_zero_not_nan():
    a = memory_adapter("a", {"q": (2, 6, 5)}, seed=1)
    z = memory_adapter("z", {"q": (2, 6, 5)}, seed=2)
    z.modules["q"].B.zero_()
    result = similarity_matrix({"a": a, "z": z})
    assert result("a", "z") == 0.0 and np.isfinite(result.matrix).all()
    assert delta_cosine(a.modules["q"], z.modules["q"]) == 0.0


def test_to_json_and_unknown_method(adapters):
    payload = similarity_matrix(adapters).to_json()
    assert payload["names"] == ["a", "b", "c", "d"] and len(payload["matrix"]) == 4
    with pytest.raises(ValueError, match="unknown similarity method"):
        similarity_matrix(adapters, method="cka")


def _update_module(delta: torch.Tensor) -> LoraModule:
    """A LoRA factorisation (full rank, scaling 1) of a given update."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return LoraModule((torch.diag(s) @ vh).float(), u.float(), float(len(s)), 1.0)


def test_centered_similarity_sees_twins_that_the_common_part_hides():
    """Every update = a large common part + a task part: plain cosine scores all pairs alike,
    the centered one puts the two adapters of one task far above unrelated pairs."""
    generator = torch.Generator().manual_seed(0)
    common = torch.randn(10, 12, generator=generator)
    task = torch.randn(10, 12, generator=generator)
    deltas = {"twin_a": 3 * common + task, "twin_b": 3 * common + task}
    for i in range(5):
        deltas[f"other{i}"] = 3 * common + torch.randn(10, 12, generator=generator)
    deltas["twin_a"] += 0.5 * torch.randn(10, 12, generator=generator)  # trained separately
    adapters = []
    for name, delta in deltas.items():
        adapter = LoraAdapter(name, path=None, config={})
        adapter.modules["q"] = _update_module(delta)
        adapters.append(adapter)
    result = similarity_matrix(adapters)
    plain_twins, plain_other = result("twin_a", "twin_b"), result("twin_a", "other0")
    assert plain_other > 0.8 and plain_twins - plain_other < 0.15  # the common part dominates
    twins = result.centered_similarity("twin_a", "twin_b")
    unrelated = [result.centered_similarity("twin_a", f"other{i}") for i in range(5)]
    assert twins > 0.6 and max(unrelated) < 0.2
    assert result.subset(["twin_b", "twin_a"]).centered_similarity("twin_a", "twin_b") == twins


def test_centered_similarity_needs_a_bank_of_min_centered_adapters():
    """With fewer adapters of a layer the mean update is no common part (two centered updates
    are each other's negative): no centered similarity, not a misleading one."""
    small = [memory_adapter(str(s), {"q": (2, 6, 5)}, seed=s) for s in range(MIN_CENTERED - 1)]
    assert similarity_matrix(small).centered_similarity("0", "1") is None
    large = [memory_adapter(str(s), {"q": (2, 6, 5)}, seed=s) for s in range(MIN_CENTERED)]
    assert similarity_matrix(large).centered_similarity("0", "1") is not None
