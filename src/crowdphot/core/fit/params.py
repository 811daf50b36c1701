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
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ParamSet", "SOURCE_PARAMS", "GROUP_PARAMS"]

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
