import sys

from cinema.cli import main

sys.exit(main())
