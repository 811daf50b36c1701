"""``python -m crowdphot`` runs the command-line tool."""

import sys

from crowdphot.cli.app import main

sys.exit(main())
