import sys

from ctxpipe.cli import main

sys.exit(main())
