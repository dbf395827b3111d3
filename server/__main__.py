"""`python -m server`: the same as the `montybase` command."""

import sys

from .cli import main

sys.exit(main())
