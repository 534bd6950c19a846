"""The operator study: every arm x every seed, paired statistics (afa_d2.study.cli; ``--help``)."""
import sys

from afa_d2.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
