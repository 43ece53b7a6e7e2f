"""`python -m seglab.cli` (what `torchrun -m seglab.cli train ...` runs)."""

import sys

from seglab.cli import main

sys.exit(main())
