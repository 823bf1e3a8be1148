"""Judging: reading published judged runs and the learned offline judge fitted on real verdicts.

Sits beside eval (layer 2): it may import data, train and, for now, eval.records, eval.verdict
and eval.judges; eval must not import it at module level from records/verdict (no cycle).
"""
