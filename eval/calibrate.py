"""Alias: calibration moved to judge.calibrate (judge/). `python -m eval.calibrate` keeps working."""
import sys

from judge.calibrate import *  # noqa: F401,F403
from judge.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
