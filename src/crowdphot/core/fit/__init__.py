"""The batched fitting engine (functional core).

``fit_psf`` fits many sources at once (groups simultaneously) with a batched
Levenberg-Marquardt; see :mod:`crowdphot.core.fit.engine`.
"""

from crowdphot.core.fit.engine import FitResult, _fit_psf, fit_psf

__all__ = ["FitResult", "fit_psf", "_fit_psf"]
