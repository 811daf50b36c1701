"""The ``crowdphot`` command-line tool."""

from crowdphot.cli.app import main

__all__ = ["main"]
