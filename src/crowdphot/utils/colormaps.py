"""Small plotting helpers used alongside PSF photometry.

``simple_norm`` is astropy's (re-exported so that every helper the photutils notebooks import has
a ``crowdphot`` equivalent); ``make_random_cmap`` builds a colormap of random muted colours for
showing groups or segmentation labels.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from astropy.visualization import simple_norm

from crowdphot.core.validate import deprecated_positional

__all__ = ["make_random_cmap", "simple_norm"]


@deprecated_positional("seed")
def make_random_cmap(n_colors=256, *, seed=None, ncolors=None):
    """Colormap of ``n_colors`` random muted colours.

    Hue is uniform in [0, 1), saturation in [0.2, 0.7) and value in [0.5, 1), drawn (in that
    order) from ``numpy.random.default_rng(seed)``, so a given seed gives the same colours as
    photutils' ``make_random_cmap``.

    Parameters
    ----------
    n_colors : int, optional
        Number of colours, >= 1.
    seed : int, optional
        Seed of the generator; ``None`` draws fresh entropy.
    ncolors : int, optional
        Deprecated spelling of ``n_colors`` (photutils 3.0's ``AstropyDeprecationWarning``).

    Returns
    -------
    cmap : matplotlib.colors.ListedColormap
        ``cmap.colors`` is an ``(n_colors, 4)`` RGBA array.

    Examples
    --------
    >>> cmap = make_random_cmap(500, seed=123)
    >>> cmap.colors.shape
    (500, 4)
    """
    if ncolors is not None:
        if n_colors != 256:
            raise TypeError("give either n_colors or ncolors, not both")
        from astropy.utils.exceptions import AstropyDeprecationWarning

        warnings.warn("'ncolors' was deprecated in version 3.0 and will be removed in version "
                      "4.0. Use argument 'n_colors' instead.", AstropyDeprecationWarning,
                      stacklevel=2)
        n_colors = ncolors
    if isinstance(n_colors, bool) or not isinstance(n_colors, numbers.Integral):
        raise TypeError(f"n_colors must be an integer, got {n_colors!r}")
    if n_colors < 1:
        raise ValueError(f"n_colors must be at least 1, got {n_colors!r}")

    from crowdphot.core.optional import require_matplotlib

    require_matplotlib("make_random_cmap")
    from matplotlib import colors

    rng = np.random.default_rng(seed)
    # Each channel is drawn in full before the next, so changing the draw order (e.g. one HSV
    # triple at a time) would change the colours for a given seed.
    hsv = np.empty((int(n_colors), 3))
    hsv[:, 0] = rng.uniform(0.0, 1.0, size=n_colors)
    hsv[:, 1] = rng.uniform(0.2, 0.7, size=n_colors)
    hsv[:, 2] = rng.uniform(0.5, 1.0, size=n_colors)
    rgba = colors.to_rgba_array(colors.hsv_to_rgb(hsv))
    return colors.ListedColormap(rgba)
