"""``python -m lvmbench`` runs the command line."""

import sys

from lvmbench.cli import main

sys.exit(main())
