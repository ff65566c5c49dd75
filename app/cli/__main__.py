"""`python -m app.cli ...`: the same as `svd-server ...`."""
import sys

from app.cli.main import main

sys.exit(main())
