"""The parameter set of a batched fit, as data.

The engine (``lm``, ``solve``, ``dense``, ``sparse``, ``slabs``) never assumes a number of
parameters: block sizes follow from a :class:`ParamSet`.

* **Per-source parameters** (``source``): one value per source; today the PSF's position and
  flux, ``('x', 'y', 'flux')``, in this (Jacobian) order. They form the ``K x K`` blocks of the
  normal matrix (``K = len(source)``), coupled between sources whose PSFs share pixels.
* **Group parameters** (``group``): one value per group, shared by every member of the group
  and therefore *tied across its sources*: ``'sky'`` is a constant added to the model over
  every fit stamp of the group (DAOPHOT ALLSTAR's sky). Each adds one row/column that couples
  to every member of the group (an arrowhead): dense groups solve the bordered matrix
  directly, large sparse groups eliminate it with a Schur complement (see
  :func:`crowdphot.core.fit.solve.solve_groups`).

A parameter tied across sources of *different* groups would couple those groups; the engine
expresses such a tie by fitting them as one group with a group parameter.

* **Tied source copies** (:class:`TiedParams`): ``m`` *copies* of ``n`` sources (e.g. one per
  exposure of a joint fit of many exposures, each copy with its own stamp, PSF and pixel
  grid), whose per-source parameters are functions of one shared parameter vector per source,
  ``theta[c] = offset[c] + matrix[c] @ p[star[c]]`` (linearised around the current point):
  e.g. a shared sky offset ``(xi, eta)`` mapped through each exposure's WCS Jacobian, and one
  flux per filter. The engine evaluates the copies as ordinary sources and solves for ``p``
  with the chain rule (:mod:`crowdphot.core.fit.tied`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ParamSet", "SOURCE_PARAMS", "GROUP_PARAMS", "TiedParams"]

#: Per-source parameters the engine knows how to differentiate (PSF position and flux).
SOURCE_PARAMS = ("x", "y", "flux")
#: Group parameters the engine knows: a constant sky level over the group's stamps.
GROUP_PARAMS = ("sky",)


@dataclass(frozen=True)
class ParamSet:
    """Which parameters a batched fit solves for.

    Parameters
    ----------
    source : tuple of str
        Per-source parameters, a subset of :data:`SOURCE_PARAMS` in that order (fixed
        parameters stay in the set and are held with the ``free`` mask).
    group : tuple of str
        Parameters shared by all members of a group, from :data:`GROUP_PARAMS`.

    Examples
    --------
    >>> p = ParamSet(group=('sky',))
    >>> p.n_source, p.n_group, p.names
    (3, 1, ('x', 'y', 'flux', 'sky'))
    """

    source: tuple = SOURCE_PARAMS
    group: tuple = ()

    def __post_init__(self):
        if tuple(self.source) != SOURCE_PARAMS:
            raise ValueError(f"source parameters must be {SOURCE_PARAMS}, got {self.source!r}")
        unknown = [g for g in self.group if g not in GROUP_PARAMS]
        if unknown or len(set(self.group)) != len(self.group):
            raise ValueError(f"group parameters must be distinct names from {GROUP_PARAMS}, "
                             f"got {self.group!r}")

    @property
    def n_source(self):
        """Number of per-source parameters ``K``."""
        return len(self.source)

    @property
    def n_group(self):
        """Number of group parameters ``S``."""
        return len(self.group)

    @property
    def names(self):
        """All parameter names, per-source first (the order of the covariance blocks)."""
        return tuple(self.source) + tuple(self.group)


@dataclass(frozen=True)
class TiedParams:
    """Per-source parameters of ``m`` source copies tied to ``n`` shared parameter vectors.

    ``theta[c] = offset[c] + matrix[c] @ p[star[c]]`` for copy ``c`` (the chain rule of a
    linearised map; a caller with an exact non-linear map gives exact positions through its own
    ``theta`` and uses ``matrix`` as the local Jacobian).

    Parameters
    ----------
    star : ndarray of int64, shape (m,)
        Shared parameter vector (source) of each copy, in ``0..n-1``.
    matrix : ndarray of shape (m, K, P)
        ``d theta[c] / d p[star[c]]`` (``K`` per-source parameters of a copy, ``P`` shared).
    offset : ndarray of shape (m, K)
        ``theta`` at ``p = 0``.
    n_star : int
        Number of shared parameter vectors ``n``.
    names : tuple of str, length P
        Names of the shared parameters.

    Examples
    --------
    >>> m = np.zeros((2, 3, 3)); m[:, 0, 0] = m[:, 1, 1] = m[:, 2, 2] = 1.0
    >>> t = TiedParams(np.array([0, 0]), m, np.array([[1.0, 2.0, 0.0], [11.0, 2.0, 0.0]]), 1,
    ...                ("u", "v", "flux"))
    >>> t.theta(np.array([[0.5, 0.0, 10.0]])).tolist()
    [[1.5, 2.0, 10.0], [11.5, 2.0, 10.0]]
    >>> t.reduce_vector(np.ones((2, 3))).tolist()
    [[2.0, 2.0, 2.0]]
    """

    star: np.ndarray
    matrix: np.ndarray
    offset: np.ndarray
    n_star: int
    names: tuple

    @property
    def n_shared(self):
        """Number of shared parameters per source ``P``."""
        return self.matrix.shape[2]

    def theta(self, p):
        """Per-copy parameters ``(m, K)`` of the shared parameters ``p`` of shape (n, P)."""
        return self.offset + np.einsum("ckp,cp->ck", self.matrix, p[self.star])

    def reduce_vector(self, g):
        """``sum over copies of matrix[c]^T g[c]`` per source: (m, K) -> (n, P)."""
        v = np.einsum("ckp,ck->cp", self.matrix, g)
        return np.stack([np.bincount(self.star, v[:, j], minlength=self.n_star)
                         for j in range(v.shape[1])], axis=1)

    def block_map(self, bs1, bs2):
        """Source blocks of the copy blocks ``(bs1, bs2)``.

        Returns ``(sb1, sb2, index)``: the row and column source of every distinct source
        block (sorted) and the source block of every copy block.
        """
        key = self.star[bs1].astype(np.int64) * self.n_star + self.star[bs2]
        keys, index = np.unique(key, return_inverse=True)
        return keys // self.n_star, keys % self.n_star, index.astype(np.int64)

    def reduce_blocks(self, blocks, bs1, bs2, index, n_blocks):
        """``sum matrix[c1]^T B matrix[c2]`` of copy blocks ``(NB, K, K)`` into source blocks
        ``(n_blocks, P, P)`` (``index`` from :meth:`block_map`)."""
        t = np.einsum("bki,bkl,blj->bij", self.matrix[bs1], blocks, self.matrix[bs2],
                      optimize=True)
        out = np.zeros((n_blocks,) + t.shape[1:])
        if len(t):
            order = np.argsort(index, kind="stable")
            idx = index[order]
            first = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
            out[idx[first]] = np.add.reduceat(t[order], first, axis=0)
        return out
