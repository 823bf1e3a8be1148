"""Alias: moved to judge.metric (judge/metric.py). Import from there."""
from judge.metric import *  # noqa: F401,F403
