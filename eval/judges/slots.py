"""Alias: the slot inventory moved to judge.judges.slots. `python -m eval.judges.slots build|show`
keeps working."""
import sys

from judge.judges.slots import *  # noqa: F401,F403
from judge.judges.slots import main

if __name__ == "__main__":
    sys.exit(main())
