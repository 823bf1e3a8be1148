"""Judge-ranked preference pairs for ORPO (`python -m prefs.build`).

Building pairs needs a trained student (train/) to sample drafts and a judge (eval/) to rank
them, so this stage sits above both: data <- train/export <- eval <- prefs <- recipes/bench.
- build: the command, its options, the output files and manifest;
- pairs: candidates, their scores, the pair-selection rules and the record shapes;
- student: on-policy drafts sampled from base + SFT adapter (resumable), or read from files.
"""
