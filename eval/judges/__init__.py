"""Alias: the judges moved to judge.judges (judge/judges/). Import from there."""
from judge.judges import *  # noqa: F401,F403
