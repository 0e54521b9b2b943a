"""`python -m stride` (and `torchrun -m stride`) runs the command line."""

import sys

from stride.cli import main

sys.exit(main())
