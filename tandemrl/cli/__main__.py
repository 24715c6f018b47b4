"""`python -m tandemrl.cli ...` (what `torchrun ... -m tandemrl.cli train ...` runs)."""

import sys

from tandemrl.cli import main

sys.exit(main())
