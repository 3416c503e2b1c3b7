"""`python -m starfish_cli …` (what torchrun launches) is the `starfish` command."""

import sys

from starfish_cli.cli import main

sys.exit(main())
