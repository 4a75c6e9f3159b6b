import sys

from operator_engine.cli import main

sys.exit(main())
