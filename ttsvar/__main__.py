"""`python -m ttsvar ...`: the same as the `ttsvar` command."""

import sys

from ttsvar.cli import main

sys.exit(main())
