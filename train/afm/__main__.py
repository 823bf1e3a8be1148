"""Check a toolkit assets folder before training: `python -m train.afm /path/to/toolkit/assets`.

Reads base-model.pt memory-mapped (seconds, no 12 GB load), maps every key onto the
AFMTextV7ForCausalLM layout and prints the geometry, parameter count, skipped adapter/quantizer
tensors, tokenizer and the identity that run.json will record. Exit status 1 lists what does not fit.
"""

from __future__ import annotations

import argparse
import sys

from train.afm.configuration import AFM_26_0_SIGNATURE, AFMTextV7Config
from train.afm.loader import base_info_for, check_assets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.afm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("assets", help="folder holding base-model.pt and tokenizer.model (or the toolkit root)")
    args = parser.parse_args(argv)
    try:
        checked = check_assets(args.assets)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    config, mapped = checked.config, checked.mapped
    params = sum(p.numel() for p in checked.model.parameters())
    published = AFMTextV7Config()
    geometry = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_kv_reuse_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim")
    differs = [f for f in geometry if getattr(config, f) != getattr(published, f)]
    print(f"assets:      {checked.folder}")
    print(f"geometry:    {config.num_regular_layers} regular + {config.num_kv_reuse_layers} KV-reuse layers, "
          f"hidden {config.hidden_size}, {config.num_attention_heads}x{config.head_dim} query heads, "
          f"{config.num_key_value_heads} KV heads, FFN {config.intermediate_size}, vocab {config.vocab_size}")
    print(f"parameters:  {params:,} (tied embedding counted once)")
    print(f"skipped:     {len(mapped.skipped_adapter)} adapter tensors, "
          f"{len(mapped.skipped_quantizer)} KV-quantizer ranges")
    print(f"tokenizer:   {len(checked.tokenizer)} tokens, eos {checked.tokenizer.eos_token!r}")
    print(f"identity:    {base_info_for(checked.folder, config)['identity']}")
    if differs:
        print(f"note: geometry differs from the 26.0 system model in {differs}, yet run.json will name its "
              f"signature {AFM_26_0_SIGNATURE[:7]}: check which toolkit release these assets come from")
    else:
        print(f"matches the 26.0 system model geometry (baseModelSignature {AFM_26_0_SIGNATURE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
