"""`python -m data.prefs` is the old name of `python -m prefs.build`; it still works.

Building preference pairs needs a trained student and a judge, so it moved above train/ and eval/
(see prefs/__init__.py). This alias imports nothing from those layers: run as a command, it hands
its arguments to the new command in a fresh process.
"""
import os
import sys

if __name__ == "__main__":
    print("note: `python -m data.prefs` is now `python -m prefs.build`", file=sys.stderr)
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "prefs.build", *sys.argv[1:]])
