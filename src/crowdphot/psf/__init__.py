"""PSF photometry, as photutils.psf: models, photometry classes, grouping, flags.

The shells here validate and configure; the numerics live in :mod:`crowdphot.core`.
"""

from crowdphot.core.lazy import lazy_exports

_EXPORTS = {
    "AiryDiskPSF": "crowdphot.models.analytic",
    "CircularGaussianPRF": "crowdphot.models.analytic",
    "CircularGaussianPSF": "crowdphot.models.analytic",
    "CircularGaussianSigmaPRF": "crowdphot.models.analytic",
    "GaussianPRF": "crowdphot.models.analytic",
    "GaussianPSF": "crowdphot.models.analytic",
    "MoffatPSF": "crowdphot.models.analytic",
    "ImagePSF": "crowdphot.models.image",
    "GriddedPSFModel": "crowdphot.models.gridded",
    "STDPSFGrid": "crowdphot.models.grid_io",
    "stdpsf_reader": "crowdphot.models.gridded",
    "webbpsf_reader": "crowdphot.models.gridded",
    "PSFPhotometry": "crowdphot.psf.photometry",
    "PSFPhotometryResult": "crowdphot.psf.photometry",
    "IterativePSFPhotometry": "crowdphot.psf.iterative",
    "SourceGrouper": "crowdphot.psf.groupers",
    "SourceGroups": "crowdphot.psf.groupers",
    "PSF_FLAGS": "crowdphot.psf.flags",
    "decode_psf_flags": "crowdphot.psf.flags",
    "make_psf_model_image": "crowdphot.datasets.simulation",
    "make_psf_model": "crowdphot.psf.model_helpers",
    "fit_2dgaussian": "crowdphot.psf.utils",
    "fit_fwhm": "crowdphot.psf.utils",
    "cramer_rao_bound": "crowdphot.psf.likelihood",
    "EPSFStar": "crowdphot.psf.epsf_stars",
    "EPSFStars": "crowdphot.psf.epsf_stars",
    "LinkedEPSFStar": "crowdphot.psf.epsf_stars",
    "extract_stars": "crowdphot.psf.epsf_stars",
    "EPSFBuilder": "crowdphot.psf.epsf_builder",
    "EPSFBuildResult": "crowdphot.psf.epsf_builder",
    "EPSFFitter": "crowdphot.psf.epsf_builder",
    "build_gridded_psf": "crowdphot.psf.empirical",
    "refine_psf": "crowdphot.psf.empirical",
    "select_psf_stars": "crowdphot.psf.empirical",
    "write_stpsf_grid": "crowdphot.psf.empirical",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
