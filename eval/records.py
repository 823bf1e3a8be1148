"""Alias: moved to judge.records (judge/records.py). Import from there."""
from judge.records import *  # noqa: F401,F403
