"""crowdphot.core.fit.pairs: which PSFs reach which stamps, against a brute-force double loop.

The candidate pairs come from the compiled cell-grid search (core/kernels/pairs); these tests
check the final pair lists, ties at exactly the reach included, for the fixed and the per-source
support.
"""

import numpy as np
import pytest

from crowdphot.core.batched import stamp_origin
from crowdphot.core.fit.pairs import build_interactions


def _brute_pairs(x, y, xlo, ylo, group, fit_shape, rx, ry):
    fy, fx = fit_shape
    cx, cy = xlo + (fx - 1) / 2.0, ylo + (fy - 1) / 2.0
    out = []
    for t in range(len(x)):
        for s in range(len(x)):
            if s == t or (group[s] == group[t] and abs(x[s] - cx[t]) <= rx[s]
                          and abs(y[s] - cy[t]) <= ry[s]):
                out.append((t, s))
    return sorted(out)


@pytest.mark.parametrize("per_source", [False, True])
def test_pairs_equal_brute_force_with_ties(rng, per_source):
    n, fit_shape, margin = 300, (5, 7), 1.0
    # half-integer and integer positions: many distances equal to the reach exactly
    x = rng.integers(0, 160, n) / 2.0
    y = rng.integers(0, 120, n) / 2.0
    x[:10], y[:10] = x[10], y[10]  # duplicates
    group = np.sort(rng.integers(0, 12, n))
    xlo, ylo = stamp_origin(x, y, fit_shape)
    if per_source:
        half = rng.integers(1, 8, (n, 1)).astype(float)
        support = half
        rx = fit_shape[1] / 2.0 + half[:, 0] + margin
        ry = fit_shape[0] / 2.0 + half[:, 0] + margin
    else:
        support = (9, 11)
        rx = np.full(n, fit_shape[1] / 2.0 + 11 / 2.0 + margin)
        ry = np.full(n, fit_shape[0] / 2.0 + 9 / 2.0 + margin)
    it = build_interactions(x, y, xlo, ylo, group, fit_shape, support_shape=support,
                            margin=margin)
    want = _brute_pairs(x, y, xlo, ylo, group, fit_shape, rx, ry)
    got = list(zip(it.pt.tolist(), it.ps.tolist(), strict=True))
    assert got == want  # sorted by stamp, then source
    cx = xlo + (fit_shape[1] - 1) / 2.0
    on_edge = np.abs(x[it.ps] - cx[it.pt]) == rx[it.ps]
    assert on_edge.any()  # ties at the reach were exercised and kept


def test_pairs_refuse_non_finite_positions():
    x = np.array([1.0, np.nan])
    y = np.array([1.0, 2.0])
    xlo, ylo = np.array([0, 0]), np.array([0, 0])
    with pytest.raises(ValueError, match="finite"):
        build_interactions(x, y, xlo, ylo, np.array([0, 0]), (3, 3), support_shape=(5, 5))
