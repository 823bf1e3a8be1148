"""The toolkit's SentencePiece `tokenizer.model` as a fast transformers tokenizer with the AFM chat format.

Tokenisation matches running SentencePiece on the *whole* rendered string after replacing "\\n"
with "<n>" (Apple's pipeline), with one documented difference: the lone "▁" SentencePiece emits
before a text that starts with a marker (e.g. "<turn_start>") is dropped, as Apple's training
preprocessing does. User-defined pieces (<n>, <turn_start>, <turn_end>, ...) are matched after
normalisation, so they never break SentencePiece's word boundaries. A fast (Rust) tokenizer is
needed because TRL's assistant-only loss reads token offsets.

Chat format (BOS, then turns; <n> is the newline token):
    <s><turn_start> system<n>{system}<turn_end><turn_start> user<n>{text}<turn_end>
    <turn_start> assistant<n>{reply}<turn_end>
{system} is the default message, with a caller's system message appended after it (one space).
The assistant's reply *and* its <turn_end> sit inside TRL's {% generation %} markers, so the model
is trained to stop; nothing else appends an end token, so it is never doubled.
"""

from __future__ import annotations

import re
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
from tokenizers.models import Unigram
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter

DEFAULT_SYSTEM_MESSAGE = "A conversation between a user and a helpful assistant."
TURN_START, TURN_END, NEWLINE = "<turn_start>", "<turn_end>", "<n>"
REQUIRED_PIECES = (TURN_START, TURN_END, NEWLINE)

CHAT_TEMPLATE = (
    "{%- set default_system = '" + DEFAULT_SYSTEM_MESSAGE + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set instructions = messages[0]['content'] | trim -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set instructions = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- if not instructions -%}{%- set system = default_system -%}"
    "{%- elif instructions.startswith(default_system) -%}{%- set system = instructions -%}"
    "{%- else -%}{%- set system = default_system + ' ' + instructions -%}{%- endif -%}"
    "{{- bos_token + '<turn_start> system<n>' + system + '<turn_end>' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- raise_exception('AFM chat format: a system message is only allowed as the first message') -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<turn_start> assistant<n>' -}}"
    "{%- generation -%}{{- message['content'] + '<turn_end>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- '<turn_start> ' + message['role'] + '<n>' + message['content'] + '<turn_end>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<turn_start> assistant<n>' -}}{%- endif -%}"
)

# SentencePiece piece types (sentencepiece_model.proto): 1 normal, 2 unknown, 3 control, 4 user-defined.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4


def read_sentencepiece(path: str | Path) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as err:  # protobuf raises its own DecodeError type
        raise ValueError(f"{path}: not a SentencePiece model ({err})") from err
    if not proto.pieces:
        raise ValueError(f"{path}: SentencePiece model has no pieces")
    return proto


def _backend(proto, path) -> Tokenizer:
    spec = proto.normalizer_spec
    byte_fallback = proto.trainer_spec.byte_fallback
    if proto.trainer_spec.model_type == 1:  # unigram
        vocab = [(piece.piece, piece.score) for piece in proto.pieces]
        backend = Tokenizer(Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=byte_fallback))
    elif proto.trainer_spec.model_type == 2:  # bpe: transformers derives the merges from the piece scores
        vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
        backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=False)
    else:
        raise ValueError(f"{path}: SentencePiece model_type {proto.trainer_spec.model_type} is not unigram or bpe")

    markers = [p.piece for p in proto.pieces if p.type in (_UNKNOWN, _CONTROL, _USER_DEFINED)]
    starts_with_marker = "|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True))
    steps = [normalizers.Replace("\n", NEWLINE)]  # Apple's pipeline: newlines are the <n> piece
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # SentencePiece trims ends and collapses runs of spaces
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:  # SentencePiece's leading "▁", except before a marker (Apple strips it there)
        steps.append(normalizers.Replace(Regex(rf"\A(?!{starts_with_marker})"), "▁"))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = None

    # Markers are matched on the normalised text (normalized=True), i.e. inside one SentencePiece pass.
    special = {p.piece for p in proto.pieces if p.type in (_UNKNOWN, _CONTROL)} | {TURN_START, TURN_END}
    backend.add_special_tokens([AddedToken(m, normalized=True, special=True) for m in markers if m in special])
    backend.add_tokens([AddedToken(m, normalized=True, special=False) for m in markers if m not in special])

    steps = [decoders.Replace(NEWLINE, "\n"), decoders.Replace("▁", " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def build_afm_tokenizer(sp_model_path: str | Path, model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Load `tokenizer.model` as a PreTrainedTokenizerFast with the AFM chat template.

    eos_token is <turn_end> (what generation stops on). pad_token is the model's <pad> piece, else
    its unused </s>, never <turn_end>: collators that mask `labels == pad_token_id` must not hide
    the end-of-turn token the model has to learn. BOS comes from the chat template only.
    """
    proto = read_sentencepiece(sp_model_path)
    pieces = [p.piece for p in proto.pieces]
    missing = [m for m in REQUIRED_PIECES if m not in pieces]
    if missing:
        raise ValueError(f"{sp_model_path}: SentencePiece model lacks the AFM chat pieces {missing}")
    bos = pieces[proto.trainer_spec.bos_id] if proto.trainer_spec.bos_id >= 0 else None
    eos_piece = pieces[proto.trainer_spec.eos_id] if proto.trainer_spec.eos_id >= 0 else None
    pad = pieces[proto.trainer_spec.pad_id] if proto.trainer_spec.pad_id >= 0 else eos_piece
    unk = pieces[proto.trainer_spec.unk_id]
    if bos is None or pad is None:
        raise ValueError(f"{sp_model_path}: SentencePiece model needs a BOS piece and a <pad> or </s> piece")
    return PreTrainedTokenizerFast(
        tokenizer_object=_backend(proto, sp_model_path),
        bos_token=bos, eos_token=TURN_END, pad_token=pad, unk_token=unk,
        chat_template=CHAT_TEMPLATE, model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
