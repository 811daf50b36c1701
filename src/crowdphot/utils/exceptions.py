"""Warnings shared by the public subpackages (photutils.utils.exceptions' names)."""

from __future__ import annotations

from astropy.utils.exceptions import AstropyUserWarning

from crowdphot.core.validate import CrowdphotWarning

__all__ = ["NoDetectionsWarning", "FitConvergenceWarning", "LargeGroupWarning"]


class NoDetectionsWarning(CrowdphotWarning, AstropyUserWarning):
    """Issued when a finder returns no sources (nothing detected or nothing passed the cuts)."""


class FitConvergenceWarning(CrowdphotWarning, AstropyUserWarning):
    """Issued when some fits may not have converged (photutils' ``AstropyUserWarning``)."""


class LargeGroupWarning(CrowdphotWarning, AstropyUserWarning):
    """Issued when a group exceeds ``group_warning_threshold`` sources (photutils' warning)."""
