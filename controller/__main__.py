"""`python -m controller` is the `weighbridge` command."""

import sys

from controller.cli import main

sys.exit(main())
