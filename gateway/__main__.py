"""`python -m gateway` is `lpr-gateway`."""

import sys

from gateway.cli import main

sys.exit(main())
