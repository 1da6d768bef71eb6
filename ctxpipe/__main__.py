import sys

from ctxpipe.app.cli import main

sys.exit(main())
