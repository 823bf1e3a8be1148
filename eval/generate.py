"""Batched greedy generation through the contract's prompt, with per-case errors recorded.

Prompts are the same messages SFT and ORPO train on (data.contract.planner_messages), rendered
by the tokenizer's chat template. Batches are left-padded so every row's answer starts at the
same position; greedy decoding makes a run repeatable bit for bit.

Greedy batches run through `greedy_shrinking`: the same computation as `model.generate` (rotary
positions from the attention mask, a KV cache, the last position's logits, argmax), except that a
row that has emitted EOS leaves the batch and the cache at once. `model.generate` keeps computing
finished rows until the longest one ends, which made a batch with a few long answers barely
faster than one prompt at a time. Models whose generation config asks for logits processing
(repetition penalty, banned words, ...) and sampling go through `model.generate` as before.

`guided=True` decodes under the contract's JSON schema, as Apple's runtime does for a
`@Generable` type (train.guided): on either engine, greedy or sampled, batched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from data.contract import N_QUESTIONS, DiscoveryResult, parse_assistant, planner_messages


@dataclass
class Generation:
    input: str
    text: str = ""
    result: DiscoveryResult | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None          # the model produced nothing usable (or crashed)
    n_new_tokens: int = 0
    details: dict = field(default_factory=dict)  # pipeline extras (demonstrations, pruned asks)


def render_prompt(tokenizer, task_input: str, n_questions: int = N_QUESTIONS) -> str:
    return render_messages(tokenizer, planner_messages(task_input, n_questions))


def render_messages(tokenizer, messages: list[dict]) -> str:
    """Any chat (e.g. with demonstrations before the task) through the tokenizer's template."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def generate_texts(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 640,
                   batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
                   top_p: float = 1.0, num_return_sequences: int = 1, seed: int | None = None,
                   progress: bool = False, guided: bool = False,
                   n_questions: int = N_QUESTIONS) -> list[list[str]]:
    """Raw completions per prompt (a list of `num_return_sequences` strings each). `model` may
    also be train.mlx.generate's MLXEngineModel (--engine mlx): the same call runs on MLX.
    `guided`: constrained to the contract's schema with `n_questions` questions."""
    if getattr(model, "is_mlx_engine", False):
        from train.mlx.generate import generate_texts_mlx
        return generate_texts_mlx(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, do_sample=do_sample,
                                  temperature=temperature, top_p=top_p,
                                  num_return_sequences=num_return_sequences, seed=seed,
                                  progress=progress, guided=guided, n_questions=n_questions)
    import torch
    from tqdm.auto import tqdm

    from train.guided import GuidedRows

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    try:
        if seed is not None:
            torch.manual_seed(seed)
        for start in tqdm(range(0, len(prompts), batch_size), disable=not progress,
                          desc="generating", mininterval=2.0):
            chunk = prompts[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                              num_return_sequences=num_return_sequences,
                              pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
            if do_sample:
                gen_kwargs.update(temperature=temperature, top_p=top_p)
            else:
                gen_kwargs.update(temperature=None, top_p=None, top_k=None)
            rows = None
            if not do_sample and num_return_sequences == 1 and plain_greedy_config(model):
                rows = greedy_shrinking(model, enc["input_ids"], enc["attention_mask"],
                                        max_new_tokens=max_new_tokens,
                                        eos_token_id=tokenizer.eos_token_id,
                                        guide=GuidedRows(tokenizer, len(chunk), n_questions)
                                        if guided else None)
            if rows is not None:
                texts = [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
            else:
                if guided:
                    from train.guided import logits_processor
                    gen_kwargs["logits_processor"] = [logits_processor(tokenizer, n_questions)]
                with torch.no_grad():
                    seqs = model.generate(**enc, **gen_kwargs)
                new = seqs[:, enc["input_ids"].shape[1]:]
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            for i in range(len(chunk)):
                out.append(texts[i * num_return_sequences:(i + 1) * num_return_sequences])
    finally:
        tokenizer.padding_side = old_side
    return out


# Generation-config fields that make `model.generate` transform greedy logits (their defaults
# leave the logits untouched); any other value sends a batch through `model.generate` instead.
_LOGITS_FIELDS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                  "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens",
                  "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty",
                  "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "guidance_scale",
                  "watermarking_config", "renormalize_logits", "remove_invalid_values",
                  "max_time", "stop_strings", "constraints", "force_words_ids")


def plain_greedy_config(model) -> bool:
    """True when greedy `model.generate` would apply no logits processor for this model."""
    from transformers import GenerationConfig
    cfg = getattr(model, "generation_config", None)
    if cfg is None:
        return False
    default = GenerationConfig()
    for name in _LOGITS_FIELDS:
        value = getattr(cfg, name, None)
        if value is not None and value != getattr(default, name, None):
            return False
    return True


def _accepts(model, name: str) -> bool:
    import inspect
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def greedy_shrinking(model, input_ids, attention_mask, *, max_new_tokens: int,
                     eos_token_id: int, guide=None) -> list[list[int]] | None:
    """Greedy decoding of a left-padded batch; finished rows leave the batch. New token ids per
    row (EOS included when emitted), or None when the model cannot run this loop. `guide`
    (train.guided.GuidedRows, one matcher per row) masks each step's logits to the schema."""
    import torch
    from transformers.cache_utils import DynamicCache

    cache_arg = "cache" if _accepts(model, "cache") else (
        "past_key_values" if _accepts(model, "past_key_values") else None)
    if cache_arg is None:
        return None
    keep_kw = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    batch = input_ids.shape[0]
    mask = attention_mask.long()
    # As model.generate: positions count real tokens only, so left padding does not shift them.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    active = torch.arange(batch, device=input_ids.device)
    rows: list[list[int]] = [[] for _ in range(batch)]
    step_ids, step_pos = input_ids, positions
    with torch.no_grad():
        for step in range(max_new_tokens):
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                        use_cache=True, **{cache_arg: cache}, **keep_kw)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
            logits = out.logits[:, -1, :].to(dtype=torch.float32)
            if guide is not None:
                from train.guided import mask_torch_logits
                logits = mask_torch_logits(guide, active.tolist(), logits)
            tokens = logits.argmax(dim=-1)
            if guide is not None:
                guide.advance(active.tolist(), tokens.tolist())
            for row, tok in zip(active.tolist(), tokens.tolist()):
                rows[row].append(tok)
            going = tokens != eos_token_id
            if step == max_new_tokens - 1 or not bool(going.any()):
                break
            last_pos = step_pos[:, -1:]
            if not bool(going.all()):
                keep = going.nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                active, tokens, mask, last_pos = active[keep], tokens[keep], mask[keep], \
                    last_pos[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            step_ids, step_pos = tokens[:, None], last_pos + 1
    return rows


def parse_generation(task_input: str, text: str, n_questions: int = N_QUESTIONS,
                     field_map: dict | None = None) -> Generation:
    parsed = parse_assistant(text, n_questions=n_questions, field_map=field_map)
    if parsed.result is None:
        return Generation(task_input, text, None, parsed.problems, "; ".join(parsed.problems))
    return Generation(task_input, text, parsed.result, parsed.problems)


def generate_answers(model, tokenizer, inputs: list[str], *, n_questions: int = N_QUESTIONS,
                     max_new_tokens: int = 640, batch_size: int = 16,
                     progress: bool = False, guided: bool = False) -> list[Generation]:
    """Greedy answers for task inputs; a failure is recorded on its case, never raised."""
    prompts = [render_prompt(tokenizer, t, n_questions) for t in inputs]
    return generate_from_prompts(model, tokenizer, inputs, prompts, n_questions=n_questions,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 progress=progress, guided=guided)


def generate_from_prompts(model, tokenizer, inputs: list[str], prompts: list[str], *,
                          n_questions: int = N_QUESTIONS, max_new_tokens: int = 640,
                          batch_size: int = 16, progress: bool = False,
                          field_map: dict | None = None, guided: bool = False) -> list[Generation]:
    """Greedy answers for ready-rendered prompts (one per input); failures recorded per case.
    Answers are read under every known key spelling plus `field_map` (data.contract.keys)."""
    if len(inputs) != len(prompts):
        raise ValueError(f"{len(inputs)} inputs but {len(prompts)} prompts")
    try:
        texts = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, progress=progress, guided=guided,
                               n_questions=n_questions)
    except Exception as e:  # noqa: BLE001 — one bad batch must not lose the run; retry singly
        if type(e).__name__ == "GuidedUnavailable":
            raise
        texts = []
        for p in prompts:
            try:
                texts += generate_texts(model, tokenizer, [p], max_new_tokens=max_new_tokens,
                                        guided=guided, n_questions=n_questions)
            except Exception as e1:  # noqa: BLE001
                texts.append([f"\0generation failed: {type(e1).__name__}: {e1}"])
        del e
    gens = []
    for inp, (text,) in zip(inputs, texts):
        if text.startswith("\0"):
            gens.append(Generation(inp, "", None, [], text[1:]))
        else:
            gens.append(parse_generation(inp, text, n_questions, field_map))
    return gens
