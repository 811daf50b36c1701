"""Grouping of nearby sources for simultaneous PSF fitting.

Two sources belong to the same group when they are separated by at most ``min_separation``
pixels, either directly or through a chain of such neighbours (single-linkage / friends-of-
friends clustering). This is exactly the partition that photutils obtains from
``scipy.cluster.hierarchy.fclusterdata(..., criterion='distance')``, but computed from a k-d tree
neighbour search and a sparse connected-components pass, so time and memory grow linearly with
the number of sources instead of quadratically.

Group ids are 1-based and numbered in order of first appearance in the input (the first source
is in group 1, the first source not in group 1 starts group 2, ...), which is photutils 3's
numbering.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from crowdphot.core.validate import deprecated_positional, positive_real

__all__ = ["SourceGrouper", "SourceGroups", "group_sources"]

# The k-d tree and the exact distance test below may round a boundary distance differently;
# searching a hair wider and then applying the exact test keeps ties at d == min_separation
# identical to photutils (which compares sqrt(dx**2 + dy**2) <= min_separation).
_SEARCH_INFLATION = 1.0 + 1e-9




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


def _first_appearance_labels(labels, n_labels):
    """Renumber 0-based component labels 1..k in order of first appearance."""
    # scipy's connected_components already visits nodes in index order, which yields exactly
    # this numbering; the O(n) check guards against a future change of that internal order.
    running_max = np.maximum.accumulate(labels)
    if labels[0] == 0 and np.all(np.diff(running_max) <= 1):
        return labels.astype(np.int64) + 1
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(n_labels, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, n_labels + 1)
    return rank[labels]


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
    n = x.size
    if n == 1:
        return np.ones(1, dtype=np.int64)
    tree = cKDTree(np.column_stack((x, y)), balanced_tree=False, compact_nodes=False)
    pairs = tree.query_pairs(min_separation * _SEARCH_INFLATION, output_type="ndarray")
    if pairs.size:
        i, j = pairs[:, 0], pairs[:, 1]
        dx = x[i] - x[j]
        dy = y[i] - y[j]
        keep = np.sqrt(dx * dx + dy * dy) <= min_separation
        i, j = i[keep], j[keep]
    else:
        i = j = np.empty(0, dtype=np.intp)
    if i.size == 0:
        return np.arange(1, n + 1, dtype=np.int64)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    n_labels, labels = connected_components(graph, directed=False)
    return _first_appearance_labels(labels, n_labels)


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
    A k-d tree finds the neighbour pairs and a sparse connected-components pass joins them:
    O(n log n) time and O(n + pairs) memory, where photutils' hierarchical clustering needs the
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
