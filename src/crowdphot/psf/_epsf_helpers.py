"""Configuration helpers of the ePSF builder: checks, smoothing kernels, coordinate maps,
progress reporting and the result container (photutils 3's private helper names, so that code
and tests written against photutils' ``epsf_builder`` module run unchanged)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning
from scipy.ndimage import convolve

from crowdphot.core.kernels.epsf import round_half_away

__all__ = ["EPSFBuildResult", "pair"]


def pair(name, value, *, lower_bound=None, check_odd=False):
    """``value`` as an integer ``(2,)`` array (photutils' ``as_pair`` rules and messages).

    Parameters
    ----------
    name : str
    value : int or pair of ints
    lower_bound : (bound, inclusive), optional
    check_odd : bool, optional

    Examples
    --------
    >>> pair('size', 5, lower_bound=(3, 1), check_odd=True).tolist()
    [5, 5]
    """
    value = np.atleast_1d(value)
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1D")
    if value.dtype.kind not in "iuf" or np.any(~np.isfinite(value)):
        if value.dtype.kind in "iuf":
            raise ValueError(f"{name} must be a finite value")
        raise ValueError(f"{name} must have integer values")
    if len(value) not in (1, 2):
        raise ValueError(f"{name} must have 1 or 2 elements")
    if len(value) == 1:
        value = np.array((value[0], value[0]))
    if value.dtype.kind not in "iu":
        raise ValueError(f"{name} must have integer values")
    if check_odd and np.any(value % 2 != 1):
        raise ValueError(f"{name} must have an odd value for both axes")
    if lower_bound is not None:
        bound, inclusive = lower_bound
        bad = value < bound if inclusive else value <= bound
        if np.any(bad):
            raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {bound}")
    return value.astype(int)


class _SmoothingKernel:
    """The ePSF smoothing kernels (least-squares polynomial fits to a 5x5 delta)."""

    QUARTIC_KERNEL = np.array([
        [+0.041632, -0.080816, 0.078368, -0.080816, +0.041632],
        [-0.080816, -0.019592, 0.200816, -0.019592, -0.080816],
        [+0.078368, +0.200816, 0.441632, +0.200816, +0.078368],
        [-0.080816, -0.019592, 0.200816, -0.019592, -0.080816],
        [+0.041632, -0.080816, 0.078368, -0.080816, +0.041632]])

    QUADRATIC_KERNEL = np.array([
        [-0.07428311, 0.01142786, 0.03999952, 0.01142786, -0.07428311],
        [+0.01142786, 0.09714283, 0.12571449, 0.09714283, +0.01142786],
        [+0.03999952, 0.12571449, 0.15428215, 0.12571449, +0.03999952],
        [+0.01142786, 0.09714283, 0.12571449, 0.09714283, +0.01142786],
        [-0.07428311, 0.01142786, 0.03999952, 0.01142786, -0.07428311]])

    @classmethod
    def get_kernel(cls, kernel_type):
        """The kernel array for ``'quartic'``, ``'quadratic'`` or a given array."""
        if isinstance(kernel_type, np.ndarray):
            return kernel_type
        if isinstance(kernel_type, str) and kernel_type == "quartic":
            return cls.QUARTIC_KERNEL
        if isinstance(kernel_type, str) and kernel_type == "quadratic":
            return cls.QUADRATIC_KERNEL
        raise TypeError(f'Unsupported kernel type: {kernel_type}. Supported types are '
                        f'"quartic", "quadratic", or ndarray.')

    @staticmethod
    def apply_smoothing(data, kernel_type):
        """Convolve ``data`` with the kernel (reflecting edges); ``None`` returns ``data``."""
        if kernel_type is None:
            return data
        return convolve(data, _SmoothingKernel.get_kernel(kernel_type))


class _EPSFValidator:
    """Input checks of the builder (photutils' messages)."""

    @staticmethod
    def validate_oversampling(oversampling, *, context=""):
        """Oversampling as an ``(oy, ox)`` array of positive ints."""
        if oversampling is None:
            raise ValueError("'oversampling' must be specified")
        try:
            return pair("oversampling", oversampling, lower_bound=(0, 0))
        except (TypeError, ValueError) as exc:
            msg = f"Invalid oversampling parameter - {exc}"
            raise ValueError(f"{context}: {msg}" if context else msg) from None

    @staticmethod
    def validate_shape_compatibility(stars, oversampling, *, shape=None):
        """Check that an explicit ePSF ``shape`` can hold the oversampled stars."""
        if not stars:
            raise ValueError("Cannot validate shape compatibility with empty star list. "
                             "Please provide at least one star for ePSF building.")
        small = [f"Star {i}: {star.shape}" for i, star in enumerate(stars)
                 if min(star.shape) < 3]
        if small:
            raise ValueError(f"Found {len(small)} star(s) with very small dimensions "
                             f"(< 3x3): {', '.join(small)}. Consider using larger star "
                             f"cutouts for better ePSF quality.")
        min_h = max(star.shape[0] for star in stars) * oversampling[0] + 1
        min_w = max(star.shape[1] for star in stars) * oversampling[1] + 1
        if shape is None:
            return
        shape = np.array(shape)
        if shape.ndim != 1 or len(shape) != 2:
            raise ValueError("Shape must be a 2-element sequence")
        if shape[0] < min_h or shape[1] < min_w:
            raise ValueError(f"Requested ePSF shape {shape} is incompatible with star "
                             f"dimensions and oversampling.\n\n  Oversampling factors: "
                             f"{oversampling}\n  Minimum required ePSF shape: ({min_h}, "
                             f"{min_w})\nSolution: Use shape >= ({min_h}, {min_w}) or reduce "
                             f"oversampling factors.")
        if shape[0] % 2 == 0 or shape[1] % 2 == 0:
            warnings.warn(f"Requested ePSF shape {shape} has even dimensions. Odd dimensions "
                          f"are recommended for proper ePSF centering. Consider using "
                          f"({shape[0] + shape[0] % 2}, {shape[1] + shape[1] % 2}) instead.",
                          AstropyUserWarning, stacklevel=2)

    @staticmethod
    def validate_stars(stars, *, context=""):
        """Every star has finite data, a shape >= 3x3 and a ``cutout_center``."""
        if not hasattr(stars, "__len__") or len(stars) == 0:
            msg = "EPSFStars object must contain at least one star"
            raise ValueError(f"{context}: {msg}" if context else msg)
        invalid = []
        for i, star in enumerate(stars):
            try:
                if getattr(star, "data", None) is None:
                    invalid.append((i, "missing data"))
                elif not np.any(np.isfinite(star.data)):
                    invalid.append((i, "no finite data values"))
                elif min(star.shape) < 3:
                    invalid.append((i, f"too small ({star.shape})"))
                elif not hasattr(star, "cutout_center"):
                    invalid.append((i, "missing cutout_center"))
            except (AttributeError, TypeError, ValueError) as exc:
                invalid.append((i, f"validation error: {exc}"))
        if invalid:
            lines = [f"Star {i}: {issue}" for i, issue in invalid[:5]]
            if len(invalid) > 5:
                lines.append(f"... and {len(invalid) - 5} more")
            msg = (f"Found {len(invalid)} invalid stars out of {len(stars)} total:\n"
                   + "\n".join(lines))
            raise ValueError(f"{context}: {msg}" if context else msg)

    @staticmethod
    def validate_center_accuracy(center_accuracy):
        """A positive number (warning above 1 pixel)."""
        if not isinstance(center_accuracy, (int, float)) or isinstance(center_accuracy, bool):
            raise TypeError(f"center_accuracy must be a number, got {type(center_accuracy)}")
        if center_accuracy <= 0.0:
            raise ValueError(f"center_accuracy must be positive, got {center_accuracy}. "
                             f"Typical values are 1e-3 to 1e-4.")
        if center_accuracy > 1.0:
            warnings.warn(f"center_accuracy {center_accuracy} seems unusually large. Values "
                          f"> 1.0 may prevent convergence. Typical values are 1e-3 to 1e-4.",
                          AstropyUserWarning, stacklevel=2)

    @staticmethod
    def validate_maxiters(maxiters):
        """A positive integer (warning above 100)."""
        if not isinstance(maxiters, (int, np.integer)) or isinstance(maxiters, bool):
            raise TypeError(f"maxiters must be an integer, got {type(maxiters)}")
        if maxiters <= 0:
            raise ValueError("maxiters must be a positive number")
        if maxiters > 100:
            warnings.warn(f"maxiters {maxiters} seems unusually large. Values > 100 may "
                          f"indicate convergence issues. Consider checking your data and "
                          f"parameters.", AstropyUserWarning, stacklevel=2)


class _CoordinateTransformer:
    """Maps between star pixel offsets and oversampled ePSF samples."""

    def __init__(self, oversampling):
        self.oversampling = np.asarray(oversampling)

    def star_to_epsf_coords(self, star_x, star_y, epsf_origin):
        """Nearest ePSF sample ``(ix, iy)`` (ints) of offsets from the star centre."""
        ix = round_half_away(self.oversampling[1] * np.asarray(star_x) + epsf_origin[0])
        iy = round_half_away(self.oversampling[0] * np.asarray(star_y) + epsf_origin[1])
        return ix.astype(int), iy.astype(int)

    def compute_epsf_shape(self, star_shapes):
        """Largest star shape times the oversampling, made odd."""
        if not star_shapes:
            raise ValueError("Need at least one star to compute ePSF shape")
        h = max(s[0] for s in star_shapes) * self.oversampling[0]
        w = max(s[1] for s in star_shapes) * self.oversampling[1]
        return (int(h + 1 - h % 2), int(w + 1 - w % 2))

    def compute_epsf_origin(self, epsf_shape):
        """Array centre ``(x, y)`` of an ePSF of this shape."""
        return ((epsf_shape[1] - 1) / 2.0, (epsf_shape[0] - 1) / 2.0)

    def oversampled_to_undersampled(self, x, y):
        """ePSF samples to detector pixels."""
        return x / self.oversampling[1], y / self.oversampling[0]

    def undersampled_to_oversampled(self, x, y):
        """Detector pixels to ePSF samples."""
        return x * self.oversampling[1], y * self.oversampling[0]


class _ProgressReporter:
    """Optional tqdm bar over the build iterations."""

    def __init__(self, enabled, maxiters):
        self.enabled = enabled
        self.maxiters = maxiters
        self._pbar = None

    def setup(self):
        """Create the bar when enabled; returns self."""
        self._pbar = None
        if self.enabled:
            from tqdm.auto import tqdm

            self._pbar = tqdm(total=self.maxiters,
                              desc=f"EPSFBuilder ({self.maxiters} maxiters)")
        return self

    def update(self):
        """Advance the bar by one iteration."""
        if self._pbar is not None:
            self._pbar.update()

    def write_convergence_message(self, iteration):
        """Report early convergence on the bar."""
        if self._pbar is not None:
            self._pbar.write(f"EPSFBuilder converged after {iteration} iterations (of "
                             f"{self.maxiters} maximum iterations)")

    def close(self):
        """Close the bar."""
        if self._pbar is not None:
            self._pbar.close()


@dataclass
class EPSFBuildResult:
    """Result of an ePSF build; unpacks as ``(epsf, fitted_stars)``.

    Attributes
    ----------
    epsf : ImagePSF
        The built ePSF.
    fitted_stars : EPSFStars
        The stars with their final fitted centres and fluxes.
    iterations : int
        Build iterations performed.
    converged : bool
        Whether the star centres moved less than ``center_accuracy`` in the last iteration.
    final_center_accuracy : float
        Largest centre shift in the last iteration, in pixels.
    n_excluded_stars : int
        Stars excluded after repeated fit failures.
    excluded_star_indices : list
        Their indices in ``fitted_stars.all_stars``.

    Examples
    --------
    >>> res = EPSFBuildResult('psf', 'stars', 3, True, 1e-4, 0, [])
    >>> epsf, stars = res
    >>> epsf, res[1]
    ('psf', 'stars')
    """

    epsf: object
    fitted_stars: object
    iterations: int
    converged: bool
    final_center_accuracy: float
    n_excluded_stars: int
    excluded_star_indices: list

    def __iter__(self):
        return iter((self.epsf, self.fitted_stars))

    def __getitem__(self, index):
        if index == 0:
            return self.epsf
        if index == 1:
            return self.fitted_stars
        raise IndexError("EPSFBuildResult index must be 0 (epsf) or 1 (fitted_stars)")
