"""`python -m train.rft` runs `python -m rl.rft` (same arguments).

Rejection sampling ranks answers with the judge, which lives in eval/, above train/; the stage
therefore lives in rl/ (see rl/__init__.py). This alias imports nothing from those layers: run as a command, it
hands its arguments to rl.rft in a fresh process.
"""
import os
import sys

if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "rl.rft", *sys.argv[1:]])
