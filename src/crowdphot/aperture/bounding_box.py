"""Integer pixel bounding boxes, as photutils.aperture.BoundingBox."""

from __future__ import annotations

import numpy as np

__all__ = ["BoundingBox"]


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class BoundingBox:
    """Integer pixel box ``[ixmin, ixmax) x [iymin, iymax)`` (upper limits exclusive).

    Parameters
    ----------
    ixmin, ixmax, iymin, iymax : int
        Pixel limits; ``ixmin <= ixmax`` and ``iymin <= iymax``.

    Examples
    --------
    >>> BoundingBox(1, 10, 2, 20).shape
    (18, 9)
    >>> BoundingBox(1, 10, 2, 20) | BoundingBox(5, 21, 7, 32)
    BoundingBox(ixmin=1, ixmax=21, iymin=2, iymax=32)
    """

    def __init__(self, ixmin, ixmax, iymin, iymax):
        if not all(_is_int(v) for v in (ixmin, ixmax, iymin, iymax)):
            raise TypeError("ixmin, ixmax, iymin, and iymax must all be integers")
        if ixmin > ixmax:
            raise ValueError(f"ixmin must be <= ixmax, got {ixmin} > {ixmax}")
        if iymin > iymax:
            raise ValueError(f"iymin must be <= iymax, got {iymin} > {iymax}")
        self.ixmin, self.ixmax = int(ixmin), int(ixmax)
        self.iymin, self.iymax = int(iymin), int(iymax)

    @classmethod
    def from_float(cls, xmin, xmax, ymin, ymax):
        """The smallest box holding every pixel whose centre lies in the float limits.

        Examples
        --------
        >>> BoundingBox.from_float(xmin=1.4, xmax=10.4, ymin=1.6, ymax=10.6)
        BoundingBox(ixmin=1, ixmax=11, iymin=2, iymax=12)
        """
        ixmin = int(np.floor(xmin + 0.5))
        ixmax = int(np.ceil(xmax + 0.5))
        iymin = int(np.floor(ymin + 0.5))
        iymax = int(np.ceil(ymax + 0.5))
        return cls(ixmin, ixmax, iymin, iymax)

    def _tuple(self):
        return self.ixmin, self.ixmax, self.iymin, self.iymax

    def __eq__(self, other):
        if not isinstance(other, BoundingBox):
            raise TypeError("Can compare BoundingBox only to another BoundingBox.")
        return self._tuple() == other._tuple()

    def __ne__(self, other):
        return not self == other

    __hash__ = None

    def __or__(self, other):
        return self.union(other)

    def __and__(self, other):
        return self.intersection(other)

    def __repr__(self):
        return (f"BoundingBox(ixmin={self.ixmin}, ixmax={self.ixmax}, iymin={self.iymin}, "
                f"iymax={self.iymax})")

    @property
    def center(self):
        """``(y, x)`` centre of the box."""
        return 0.5 * (self.iymax - 1 + self.iymin), 0.5 * (self.ixmax - 1 + self.ixmin)

    @property
    def shape(self):
        """``(ny, nx)`` size of the box."""
        return self.iymax - self.iymin, self.ixmax - self.ixmin

    @property
    def extent(self):
        """``(xmin, xmax, ymin, ymax)`` pixel-edge extent (for ``imshow``)."""
        return self.ixmin - 0.5, self.ixmax - 0.5, self.iymin - 0.5, self.iymax - 0.5

    def get_overlap_slices(self, shape):
        """Slices of an array of ``shape`` and of the box covering their overlap.

        Returns ``(None, None)`` when they do not overlap.
        """
        if len(shape) != 2:
            raise ValueError(f"input shape must have 2 elements, got {shape!r}")
        ny, nx = shape
        if self.ixmin >= nx or self.iymin >= ny or self.ixmax <= 0 or self.iymax <= 0:
            return None, None
        large = (slice(max(self.iymin, 0), min(self.iymax, ny)),
                 slice(max(self.ixmin, 0), min(self.ixmax, nx)))
        small = (slice(max(-self.iymin, 0), min(self.iymax, ny) - self.iymin),
                 slice(max(-self.ixmin, 0), min(self.ixmax, nx) - self.ixmin))
        return large, small

    def union(self, other):
        """The smallest box holding both boxes."""
        if not isinstance(other, BoundingBox):
            raise TypeError("BoundingBox can be joined only with another BoundingBox.")
        return BoundingBox(min(self.ixmin, other.ixmin), max(self.ixmax, other.ixmax),
                           min(self.iymin, other.iymin), max(self.iymax, other.iymax))

    def intersection(self, other):
        """The overlap of both boxes, None when they do not overlap."""
        if not isinstance(other, BoundingBox):
            raise TypeError("BoundingBox can be intersected only with another BoundingBox.")
        ixmin, ixmax = max(self.ixmin, other.ixmin), min(self.ixmax, other.ixmax)
        iymin, iymax = max(self.iymin, other.iymin), min(self.iymax, other.iymax)
        if ixmax < ixmin or iymax < iymin:
            return None
        return BoundingBox(ixmin, ixmax, iymin, iymax)

    def as_artist(self, **kwargs):
        """A matplotlib ``Rectangle`` patch covering the box's pixel edges."""
        from crowdphot.core.optional import require_matplotlib

        require_matplotlib("BoundingBox.as_artist")
        from matplotlib.patches import Rectangle

        kwargs.setdefault("fill", False)
        return Rectangle((self.ixmin - 0.5, self.iymin - 0.5), self.shape[1], self.shape[0],
                         **kwargs)

    def plot(self, ax=None, origin=(0, 0), **kwargs):
        """Draw the box on ``ax`` (default: current axes); returns the patch."""
        from crowdphot.core.optional import require_matplotlib

        require_matplotlib("BoundingBox.plot")
        import matplotlib.pyplot as plt

        if ax is None:
            ax = plt.gca()
        patch = self.as_artist(**kwargs)
        patch.set_xy((patch.get_x() - origin[0], patch.get_y() - origin[1]))
        ax.add_patch(patch)
        return patch
