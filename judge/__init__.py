"""Judging: verdicts and judged records, the judges (offline, anthropic, learned), the scorecard
and paired test, calibration, reading published judged runs, and the learned offline judge.

Layer 2 (tests/test_layers.py): below eval (the research loop: ruler, generation, experiment log),
prefs and rl, so it imports only data and train. `python -m eval.judge` loads the frozen ruler
and calls judge.cli; eval.calibrate, eval.judges(.slots), eval.verdict, eval.records and
eval.metric are aliases of the modules here.
"""
