"""merge_results: metric-aware, -1 padding, equals a global sort."""

import numpy as np
import pytest

from shards import merge_results
from shards.merge import id_lookup, translate_ids


@pytest.mark.parametrize("keep_max", [False, True])
def test_merge_equals_global_sort(keep_max):
    rng = np.random.default_rng(0)
    nq, k, shards = 30, 10, 5
    parts, allD, allI = [], [], []
    for s in range(shards):
        D = rng.random((nq, k)).astype(np.float32)
        D = -np.sort(-D, axis=1) if keep_max else np.sort(D, axis=1)
        I = rng.permutation(10_000)[: nq * k].reshape(nq, k) + s * 10_000
        parts.append((D, I))
        allD.append(D)
        allI.append(I)
    D, I = merge_results(parts, keep_max)
    Dc, Ic = np.hstack(allD), np.hstack(allI)
    order = np.argsort(-Dc if keep_max else Dc, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(I, np.take_along_axis(Ic, order, 1))
    np.testing.assert_array_equal(D, np.take_along_axis(Dc, order, 1))


def test_merge_pads_with_minus_one():
    big = np.float32(np.finfo(np.float32).max)
    a = (np.array([[1.0, 3.0, big]], np.float32), np.array([[10, 30, -1]]))
    b = (np.array([[2.0, big, big]], np.float32), np.array([[20, -1, -1]]))
    D, I = merge_results([a, b], keep_max=False)
    np.testing.assert_array_equal(I, [[10, 20, 30]])
    np.testing.assert_array_equal(D, [[1.0, 2.0, 3.0]])
    _D, I = merge_results([(a[0][:, :1], a[1][:, :1]), (b[0][:, :1], b[1][:, :1])], False)
    np.testing.assert_array_equal(I, [[10]])
    c = (np.array([[5.0, big, big, big]], np.float32), np.array([[1, -1, -1, -1]]))
    _D, I = merge_results([c, c], keep_max=False)
    assert I[0, 0] == 1 and (I[0, 2:] == -1).all()


def test_drop_repeats_keeps_each_ids_best_occurrence():
    from shards.merge import drop_repeats

    D = np.array([[0.1, 0.2, 0.3, 0.5], [1.0, 2.0, 3.0, 4.0]], np.float32)
    I = np.array([[5, 7, 5, -1], [1, 2, 3, 4]])
    D2, I2 = drop_repeats(D, I, np.inf)
    assert I2.tolist() == [[5, 7, -1, -1], [1, 2, 3, 4]]
    assert D2[0, :2].tolist() == pytest.approx([0.1, 0.2]) and np.isinf(D2[0, 3])
    assert drop_repeats(D[1:], I[1:], np.inf)[1].tolist() == [[1, 2, 3, 4]]


@pytest.mark.parametrize("n", [0, 1, 50])
def test_id_lookup_takes_ids_and_keeps_padding(n):
    rng = np.random.default_rng(n)
    ids = rng.choice(10**12, n, replace=False).astype(np.int64)
    rows = rng.integers(-1, n, size=(6, 5)) if n else np.full((6, 5), -1)
    rows[:, -2:] = -1  # padding at the end of each row, as faiss leaves it
    rows[0, 0] = -1  # and anywhere else
    expect = np.where(rows >= 0, ids[np.maximum(rows, 0)] if n else -1, -1)
    np.testing.assert_array_equal(id_lookup(ids).take(rows), expect)
    np.testing.assert_array_equal(translate_ids(rows, ids), expect)
