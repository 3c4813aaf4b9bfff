"""`python -m fieldsync.cli`: the `fieldsync` command."""

import sys

from fieldsync.cli import main

sys.exit(main())
