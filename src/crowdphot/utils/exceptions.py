"""Warnings shared by the public subpackages (photutils.utils.exceptions' names)."""

from __future__ import annotations

from astropy.utils.exceptions import AstropyUserWarning

from crowdphot.core.validate import CrowdphotWarning

__all__ = ["NoDetectionsWarning"]


class NoDetectionsWarning(CrowdphotWarning, AstropyUserWarning):
    """Issued when a finder returns no sources (nothing detected or nothing passed the cuts)."""
