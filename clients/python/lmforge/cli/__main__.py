"""`python -m lmforge.cli ...`: the same as the `lmforge` console script."""

import sys

from lmforge.cli import main

sys.exit(main())
