"""Benchmark: what guided generation costs, and LoRA SFT / generation throughput on a real model.

  .venv/bin/python bench/guided.py [--base smollm2-135m] [--adapter RUN_DIR] [--cases 8]
                                   [--max-new-tokens 400] [--batch-size 8] [--threads N]
                                   [--sft-steps 2] [--seq 512] [--device auto]

All in one process, on one model (not a test; prints ratios, never asserts a time):
1. grammar engines: compile time of the contract's schema (train.guided.guided_schema) and the
   mean time to compute one token mask over the model's vocabulary, for llguidance (the engine
   --guided uses) and xgrammar when it is installed (`pip install --no-deps xgrammar
   apache-tvm-ffi`; its Linux wheel otherwise pulls triton);
2. batched greedy generation of the first --cases ruler inputs, unguided and guided: wall time,
   new tokens per second, and the guided/unguided cost per token as a ratio; plus how many
   answers had exactly seven questions each way;
3. LoRA SFT throughput: --sft-steps optimizer steps of batch 4 x --seq tokens (Apple's LoRA
   targets, r 16), tokens per second.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def engines(tokenizer, n_vocab: int, steps: int = 200) -> list[tuple[str, float, float]]:
    """(engine, compile ms, mask µs per token) along one reference answer's tokens."""
    import json

    import numpy as np

    from data.contract import render_assistant
    from data.corpus import reference_cases
    from train.guided import JSON_OPTIONS, _ll_tokenizer, guided_schema

    ids = tokenizer(render_assistant(reference_cases()[0].gold),
                    add_special_tokens=False)["input_ids"][:steps]
    schema = json.dumps(guided_schema())
    out = []
    import llguidance as ll
    lltok = _ll_tokenizer(tokenizer, n_vocab)
    t0 = time.perf_counter()
    grammar = ll.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    m = ll.LLMatcher(lltok, grammar)
    compile_ms = (time.perf_counter() - t0) * 1e3
    bits = np.zeros(((n_vocab + 31) // 32,), dtype=np.int32)
    t0 = time.perf_counter()
    for tok in ids:
        m.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        m.consume_token(tok)
    out.append(("llguidance", compile_ms, (time.perf_counter() - t0) / len(ids) * 1e6))
    try:
        import xgrammar as xgr
    except ImportError:
        out.append(("xgrammar (not installed)", float("nan"), float("nan")))
        return out
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=n_vocab)
    t0 = time.perf_counter()
    compiled = xgr.GrammarCompiler(info).compile_json_schema(
        schema, any_whitespace=False, separators=(", ", ": "))
    matcher = xgr.GrammarMatcher(compiled)
    compile_ms = (time.perf_counter() - t0) * 1e3
    bitmask = xgr.allocate_token_bitmask(1, n_vocab)
    t0 = time.perf_counter()
    for tok in ids:
        matcher.fill_next_token_bitmask(bitmask)
        if not matcher.accept_token(tok):
            break
    out.append(("xgrammar", compile_ms, (time.perf_counter() - t0) / len(ids) * 1e6))
    return out


def generation(model, tokenizer, inputs, batch_size: int, max_new_tokens: int, guided: bool):
    from eval.generate import generate_answers
    t0 = time.perf_counter()
    gens = generate_answers(model, tokenizer, inputs, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, guided=guided)
    secs = time.perf_counter() - t0
    n_tokens = sum(len(tokenizer(g.text, add_special_tokens=False)["input_ids"]) for g in gens)
    seven = sum(1 for g in gens if g.result is not None and len(g.result.questions) == 7)
    return secs, n_tokens, seven


def sft_throughput(model, steps: int, seq: int, batch: int = 4) -> float:
    import torch
    from peft import LoraConfig, get_peft_model

    from train.common import APPLE_LORA_TARGETS
    from train.models import peft_quietly
    with peft_quietly():
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                target_modules=APPLE_LORA_TARGETS,
                                                task_type="CAUSAL_LM"))
    peft.train()
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
    peft(input_ids=x[:1, :32], labels=x[:1, :32]).loss.backward()    # warm-up
    opt.zero_grad()
    t0 = time.perf_counter()
    for _ in range(steps):
        peft(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return steps * batch * seq / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sft-steps", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    import torch

    from data.corpus import ruler_cases
    from train.models import load_with_adapter, pick_device
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, tok, info = load_with_adapter(args.base, args.adapter, device=device)
    n_vocab = model.get_output_embeddings().weight.shape[0]
    print(f"base {info['name_or_path']} on {device}, {torch.get_num_threads()} threads")
    print("\n1. grammar engines (contract schema, one reference answer's tokens)")
    for name, ms, us in engines(tok, n_vocab):
        print(f"  {name:26s} compile {ms:8.2f} ms   mask {us:8.1f} µs/token")
    inputs = [c.input for c in ruler_cases()[:args.cases]]
    print(f"\n2. batched greedy generation, {len(inputs)} ruler inputs, batch {args.batch_size}, "
          f"<= {args.max_new_tokens} new tokens")
    rows = {}
    for guided in (False, True):
        secs, n, seven = generation(model, tok, inputs, args.batch_size, args.max_new_tokens,
                                    guided)
        rows[guided] = secs / max(n, 1)
        print(f"  {'guided' if guided else 'unguided':9s} {secs:7.1f} s  {n:6d} tokens  "
              f"{n / secs:7.1f} tokens/s  exactly 7 questions: {seven}/{len(inputs)}")
    print(f"  guided/unguided cost per token: {rows[True] / rows[False]:.2f}x")
    if args.sft_steps > 0 and args.adapter is None:
        print(f"\n3. LoRA SFT, batch 4 x {args.seq} tokens, {args.sft_steps} steps")
        print(f"  {sft_throughput(model, args.sft_steps, args.seq):.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
