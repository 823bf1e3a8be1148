"""Judge-driven training (layer 3, beside prefs/): policy-gradient fine-tuning whose reward is the
spec gate plus a judge's case quality against the gold answer. It needs a model from train/ and
a judge from eval/, so it sits above both; `python -m train.grpo` is a thin alias of
`python -m rl.grpo` that imports nothing from here."""
