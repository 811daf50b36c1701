"""PSF model implementations (analytic, image, gridded) and PSF-grid readers.

Users import them from :mod:`crowdphot.psf`.
"""
