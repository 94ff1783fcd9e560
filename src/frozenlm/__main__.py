"""`python -m frozenlm`: the same command as `frozenlm`."""

import sys

from frozenlm.cli.main import main

sys.exit(main())
