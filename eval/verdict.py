"""Alias: moved to judge.verdict (judge/verdict.py). Import from there."""
from judge.verdict import *  # noqa: F401,F403
