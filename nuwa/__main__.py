import sys

from nuwa.cli import main

sys.exit(main())
