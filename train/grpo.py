"""`python -m train.grpo` runs `python -m rl.grpo` (same arguments).

GRPO's reward is the judge, which lives in eval/, above train/; the trainer therefore lives in
rl/ (see rl/__init__.py). This alias imports nothing from those layers: run as a command, it
hands its arguments to rl.grpo in a fresh process.
"""
import os
import sys

if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "rl.grpo", *sys.argv[1:]])
