"""``python -m crowdphot`` runs the command-line tool."""

import sys

from crowdphot.cli import main

sys.exit(main())
