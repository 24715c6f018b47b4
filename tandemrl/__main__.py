"""`python -m tandemrl ...` is `tandem ...`."""

import sys

from tandemrl.cli import main

sys.exit(main())
