import numpy as np
import pytest

from taskexpert.errors import InputError
from taskexpert.selection.kmeans import kmeans_representatives


def blobs(seed=0, per=50, centres=((0, 0), (10, 0), (0, 10), (10, 10))):
    rng = np.random.default_rng(seed)
    points = [np.asarray(c) + rng.normal(0, 0.5, (per, 2)) for c in centres]
    return np.concatenate(points).astype(np.float32)


def test_one_pick_per_blob_each_the_row_nearest_its_blob_centre():
    data = blobs()
    picks = kmeans_representatives(data, 4, seed=0)
    blob = sorted(p // 50 for p in picks)
    assert blob == [0, 1, 2, 3]
    for p in picks:
        members = data[(p // 50) * 50 : (p // 50 + 1) * 50]
        distances = np.linalg.norm(members - members.mean(axis=0), axis=1)
        # the centroid fitted on the sample sits near the blob's mean: its row is among the
        # 5 rows nearest the mean (of 50)
        assert np.linalg.norm(data[p] - members.mean(axis=0)) <= np.sort(distances)[4] + 1e-6


def test_outliers_are_never_picked_and_excluded_rows_never_either():
    data = blobs()
    outliers = np.array([[100.0, 100.0], [-100.0, 50.0]], np.float32)
    data = np.concatenate([data, outliers])
    picks = kmeans_representatives(data, 4, seed=1)
    assert not set(picks) & {200, 201}
    excluded = list(range(0, 50))  # the whole first blob
    picks = kmeans_representatives(data, 4, exclude=excluded, seed=1)
    assert not set(picks) & set(excluded)
    assert len(set(picks)) == 4


def test_chunking_makes_no_difference_to_a_seeded_run():
    data = blobs(seed=3)
    whole = kmeans_representatives(data, 6, seed=2)
    chunked = kmeans_representatives(data, 6, seed=2, chunk_size=7)
    assert whole == chunked and len(set(whole)) == 6


def test_k_must_fit_the_candidates():
    with pytest.raises(InputError, match="k-means needs 1 <= k <= 2"):
        kmeans_representatives(np.zeros((3, 2), np.float32), 3, exclude=[0])
