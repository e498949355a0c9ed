import numpy as np
import pytest

from taskexpert.errors import InputError
from taskexpert.selection.kcenter import kcenter_greedy
from taskexpert.selection.outliers import far_outliers, high_loss_rows, sample_distance


def _cloud_with_outliers(n=400, dim=8, planted=(5, 77, 301), seed=0):
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, dim)).astype(np.float32)
    matrix[list(planted)] += 40.0 * rng.normal(size=(len(planted), dim)).astype(np.float32)
    return matrix, sorted(planted)


def test_far_outliers_finds_the_planted_rows_in_any_chunking():
    matrix, planted = _cloud_with_outliers()
    for chunk in (7, 64, None):
        assert far_outliers(matrix, 3 / 400, sample=50, chunk_size=chunk).tolist() == planted


def test_a_sampled_row_is_not_its_own_neighbour():
    matrix, _ = _cloud_with_outliers(n=30, planted=(5,))
    distance = sample_distance(matrix, sample=30, chunk_size=4)  # every row is sampled
    assert (distance > 0).all()


def test_share_zero_excludes_nothing_and_bad_shares_are_refused():
    matrix, _ = _cloud_with_outliers()
    assert far_outliers(matrix, 0.0).size == 0
    for share in (-0.1, 1.0):
        with pytest.raises(InputError, match="outlier share"):
            far_outliers(matrix, share)


def test_plain_kcenter_picks_the_outliers_and_excluding_them_works():
    matrix, planted = _cloud_with_outliers()
    plain = kcenter_greedy(matrix, 5, initial=[0], progress=False)
    assert set(planted) <= set(plain)  # farthest-point picking goes for the outliers first
    exclude = far_outliers(matrix, 3 / 400, sample=50)
    robust = kcenter_greedy(matrix, 5, initial=[0], progress=False, exclude=exclude)
    assert not set(planted) & set(robust) and len(set(robust)) == 5
    first = kcenter_greedy(matrix, 3, progress=False, exclude=exclude, seed=3)
    assert not set(planted) & set(first)


def test_excluded_rows_shrink_what_is_left():
    matrix, _ = _cloud_with_outliers(n=10, planted=(5,))
    with pytest.raises(InputError, match="7 rows left"):
        kcenter_greedy(matrix, 8, initial=[0], exclude=[1, 2], progress=False)


def test_a_bad_exclude_list_is_named_as_such():
    matrix, _ = _cloud_with_outliers(n=10, planted=(5,))
    with pytest.raises(InputError, match="out of range") as info:
        kcenter_greedy(matrix, 2, exclude=[12], progress=False)
    assert info.value.field == "exclude"


def test_high_loss_rows_finds_a_dense_noise_tail_and_nothing_in_a_clean_pool():
    rng = np.random.default_rng(0)
    clean = rng.normal(1.5, 0.4, size=2000)  # mean response NLLs of ordinary records
    assert high_loss_rows(clean, 5.0).size == 0  # no tail: nothing is lost
    noisy = clean.copy()
    noisy[[3, 500, 1999]] = [9.0, 9.2, 8.8]  # alike noise, all far above the rest
    assert high_loss_rows(noisy, 5.0).tolist() == [3, 500, 1999]
    # the cut is on the robust scale: 0.6745 (x - median) / MAD
    median = np.median(noisy)
    mad = np.median(np.abs(noisy - median))
    edge = median + 5.0 * mad / 0.6745
    assert set(high_loss_rows(noisy, 5.0).tolist()) == set(np.flatnonzero(noisy > edge).tolist())


def test_high_loss_rows_off_flat_and_bad_input():
    assert high_loss_rows(np.array([1.0, 2.0, 30.0]), 0.0).size == 0  # 0: off
    assert high_loss_rows(np.ones(10), 3.5).size == 0  # no spread, no tail
    with pytest.raises(InputError, match="loss outlier z"):
        high_loss_rows(np.ones(3), -1.0)
    with pytest.raises(InputError, match="NaN"):
        high_loss_rows(np.array([1.0, np.nan, 2.0]), 3.5)
