"""Grouping of nearby sources for simultaneous PSF fitting.

Two sources belong to the same group when they are separated by at most ``min_separation``
pixels, either directly or through a chain of such neighbours (single-linkage / friends-of-
friends clustering). This is exactly the partition that photutils obtains from
``scipy.cluster.hierarchy.fclusterdata(..., criterion='distance')``, but computed by a compiled
cell-grid neighbour search and a union-find pass (:func:`crowdphot.core.kernels.pairs.fof_labels`),
so time and memory grow with the number of sources and neighbour pairs instead of quadratically.

Group ids are 1-based and numbered in order of first appearance in the input (the first source
is in group 1, the first source not in group 1 starts group 2, ...), which is photutils 3's
numbering.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.kernels.pairs import fof_labels
from crowdphot.core.validate import deprecated_positional, positive_real

__all__ = ["SourceGrouper", "SourceGroups", "group_sources"]


def _check_xy(x, y):
    xa = np.atleast_1d(np.asarray(getattr(x, "value", x)))
    ya = np.atleast_1d(np.asarray(getattr(y, "value", y)))
    if xa.dtype.kind not in "iuf" or ya.dtype.kind not in "iuf":
        raise TypeError("x and y must be numeric arrays")
    xa = xa.astype(float, copy=False)
    ya = ya.astype(float, copy=False)
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(
            f"x and y must have the same shape (1D arrays of equal length), got shapes "
            f"{xa.shape} and {ya.shape}"
        )
    if xa.size == 0:
        raise ValueError("x and y must not be empty")
    if not np.all(np.isfinite(xa)):
        raise ValueError("x coordinates must be finite (x contains NaN or inf values)")
    if not np.all(np.isfinite(ya)):
        raise ValueError("y coordinates must be finite (y contains NaN or inf values)")
    return xa, ya


def group_sources(x, y, min_separation):
    """Unchecked friends-of-friends grouping (see `SourceGrouper`).

    Parameters
    ----------
    x, y : ndarray of float64, shape (n,)
        Finite positions, ``n >= 1``.
    min_separation : float
        Linking length, > 0.

    Returns
    -------
    group_id : ndarray of int64, shape (n,)
        1-based ids in order of first appearance.

    Examples
    --------
    >>> group_sources(np.array([0.0, 3.0, 50.0]), np.array([0.0, 4.0, 0.0]), 5.0)
    array([1, 1, 2])
    """
    # The kernel's exact test is photutils' rule, sqrt(dx**2 + dy**2) <= min_separation, in
    # float64: ties at the linking length are grouped as photutils groups them.
    return fof_labels(x, y, min_separation)


class SourceGroups:
    """Result of grouping sources, with small analysis helpers.

    Parameters
    ----------
    x, y : array_like of shape (n,)
        Source positions.
    groups : array_like of int, shape (n,)
        Group id of each source.

    Attributes
    ----------
    x, y, groups : ndarray of shape (n,)
    n_sources : int
    n_groups : int

    Examples
    --------
    >>> g = SourceGroups([10, 15, 50], [20, 25, 60], [1, 1, 2])
    >>> g
    <SourceGroups(n_sources=3, n_groups=2)>
    >>> g.sizes
    array([2, 2, 1])
    >>> g.get_group_sources(1)
    (array([10, 15]), array([20, 25]))
    """

    def __init__(self, x, y, groups):
        self.x = np.asarray(x)
        self.y = np.asarray(y)
        self.groups = np.asarray(groups)
        if self.x.shape != self.y.shape or self.x.shape != self.groups.shape:
            raise ValueError(
                f"x, y, and groups must have the same shape, got {self.x.shape}, "
                f"{self.y.shape} and {self.groups.shape}"
            )
        self.n_sources = len(self.groups)
        self._ids, self._inverse, self._counts = np.unique(
            self.groups, return_inverse=True, return_counts=True
        )
        self.n_groups = len(self._ids)

    def __repr__(self):
        return f"<SourceGroups(n_sources={self.n_sources}, n_groups={self.n_groups})>"

    def __len__(self):
        return self.n_sources

    @property
    def size_map(self):
        """dict: group id -> number of sources in that group."""
        return dict(zip(self._ids.tolist(), self._counts.tolist(), strict=True))

    @property
    def sizes(self):
        """ndarray of int, shape (n,): size of the group each source belongs to."""
        return self._counts[self._inverse]

    @property
    def group_centers(self):
        """dict: group id -> ``(x_mean, y_mean)`` of its members."""
        xs = np.bincount(self._inverse, weights=self.x.astype(float)) / self._counts
        ys = np.bincount(self._inverse, weights=self.y.astype(float)) / self._counts
        ids = self._ids.tolist()
        return {gid: (cx, cy) for gid, cx, cy in zip(ids, xs.tolist(), ys.tolist(), strict=True)}

    def get_group_sources(self, group_id):
        """Return ``(x, y)`` of the members of ``group_id``.

        Raises
        ------
        ValueError
            If ``group_id`` is not one of the group ids.
        """
        mask = self.groups == group_id
        if not np.any(mask):
            raise ValueError(f"Group ID {group_id!r} not found in groups")
        return self.x[mask], self.y[mask]

    def plot(self, radius, *, ax=None, cmap=None, seed=0, label_groups=False,
             label_kwargs=None, label_offset=(0, 0), **kwargs):
        """Draw a circle of ``radius`` pixels around each source, one colour per group.

        Parameters
        ----------
        radius : float
            Circle radius in pixels.
        ax : matplotlib Axes, optional
            Defaults to the current axes.
        cmap : Colormap or str, optional
            Group colours (group ``k``-th in sorted id order gets colour ``k``); by default
            ``make_random_cmap(n_groups, seed=seed)``.
        seed : int, optional
            Seed of the default random colormap.
        label_groups : bool, optional
            Write each group id at its centre (shifted by ``label_offset``).
        label_kwargs : dict, optional
            Passed to ``ax.text``.
        **kwargs
            Passed to the circle patches (e.g. ``lw``).

        Returns
        -------
        ax : matplotlib Axes
        """
        from crowdphot.core.optional import require_matplotlib

        require_matplotlib("SourceGroups.plot")
        import matplotlib.pyplot as plt
        from matplotlib import colormaps
        from matplotlib.collections import PatchCollection
        from matplotlib.patches import Circle

        from crowdphot.utils.colormaps import make_random_cmap

        if ax is None:
            ax = plt.gca()
        if cmap is None:
            cmap = make_random_cmap(n_colors=self.n_groups, seed=seed)
        elif isinstance(cmap, str):
            cmap = colormaps[cmap]
        if hasattr(cmap, "colors"):
            palette = np.asarray(cmap.colors)
            colors = palette[self._inverse % len(palette)]
        else:
            colors = cmap(self._inverse)
        centres = zip(self.x.tolist(), self.y.tolist(), strict=True)
        circles = [Circle(xy, radius) for xy in centres]
        kwargs.setdefault("facecolor", "none")
        ax.add_collection(PatchCollection(circles, edgecolors=colors, **kwargs))
        ax.autoscale_view()
        if label_groups:
            text_kwargs = {"ha": "center", "va": "center", "zorder": 10}
            text_kwargs.update(label_kwargs or {})
            for k, (gid, (cx, cy)) in enumerate(self.group_centers.items()):
                color = colors[np.argmax(self._inverse == k)]
                ax.text(cx + label_offset[0], cy + label_offset[1], f"{gid}", color=color,
                        **text_kwargs)
        return ax


class SourceGrouper:
    """Group sources closer than a linking length, directly or through a chain of neighbours.

    Two sources separated by a distance ``d <= min_separation`` share a group; groups are
    the connected components of that neighbour graph. Ids are 1-based and numbered by first
    appearance in the input, exactly as photutils 3 numbers them.

    Parameters
    ----------
    min_separation : float
        Linking length in pixels, > 0.

    Notes
    -----
    A compiled cell-grid search finds the neighbour pairs and a union-find pass joins them:
    O(n log n + pairs) time and O(n) memory, where photutils' hierarchical clustering needs the
    full n(n-1)/2 distance matrix.

    Examples
    --------
    >>> grouper = SourceGrouper(min_separation=10)
    >>> grouper(np.array([10, 15, 50, 55, 100]), np.array([20, 25, 60, 65, 90]))
    array([1, 1, 2, 2, 3])
    >>> grouper([10, 15, 50], [20, 25, 60], return_groups_object=True)
    <SourceGroups(n_sources=3, n_groups=2)>
    """

    def __init__(self, min_separation):
        positive_real("min_separation", min_separation)
        self.min_separation = min_separation

    def __repr__(self):
        return f"SourceGrouper(min_separation={self.min_separation!r})"

    @deprecated_positional("return_groups_object")
    def __call__(self, x, y, *, return_groups_object=False):
        """Group the sources at ``(x, y)``.

        Parameters
        ----------
        x, y : array_like of shape (n,)
            Finite source positions, ``n >= 1``.
        return_groups_object : bool, optional
            Return a `SourceGroups` instead of the id array.

        Returns
        -------
        group_id : ndarray of int64, shape (n,) or SourceGroups
        """
        xa, ya = _check_xy(x, y)
        groups = group_sources(xa, ya, positive_real("min_separation", self.min_separation))
        if return_groups_object:
            return SourceGroups(np.atleast_1d(x), np.atleast_1d(y), groups)
        return groups
