"""The batched fitting engine (functional core).

``fit_psf`` fits many sources at once (groups simultaneously) with a batched
Levenberg-Marquardt; see :mod:`crowdphot.core.fit.engine`. The parameters solved for are data
(:class:`~crowdphot.core.fit.params.ParamSet`: per-source x, y, flux and optional group
parameters such as a fitted sky); block sizes in ``lm``, ``solve``, ``dense``, ``sparse`` and
``slabs`` follow from it.
"""

from crowdphot.core.fit.engine import FitResult, _fit_psf, fit_psf
from crowdphot.core.fit.params import ParamSet

__all__ = ["FitResult", "ParamSet", "fit_psf", "_fit_psf"]
