"""The tokenizer a GGUF file describes (``tokenizer.ggml.*``), as a ``tokenizers.Tokenizer``.

Two vocabularies: 'gpt2' (byte-level BPE with merges; the pre-tokenizer named by
``tokenizer.ggml.pre``) and 'llama' (SentencePiece BPE with byte fallback; merges
rebuilt from the pieces' scores, or for Gemma from the pieces' order).
"""

from __future__ import annotations

from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from candle_agents.engine.loader.base import TokenizerInfo
from candle_agents.engine.loader.gguf_reading import field
from candle_agents.errors import ModelLoadError

__all__ = ["build_gguf_tokenizer"]

# Token types (gguf.TokenType).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
# SentencePiece vocabularies whose merge order is the pieces' order in the file, not
# their scores (transformers' GGUF loader does the same for these architectures).
_MERGES_BY_POSITION = {"gemma", "gemma2", "gemma3"}

# The GPT-2 split regex, run after digits were cut out one by one (llama.cpp's
# "smollm"/"starcoder" pre-tokenizers; SmolLM2's own tokenizer.json does the same
# with Digits(individual_digits=True) + ByteLevel).
_DIGIT_SPLIT_PRE = {
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_LLAMA3_PRE = {
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "dbrx",
    "smaug-bpe",
}
_QWEN2_PRE = {"qwen2", "deepseek-r1-qwen", "megrez"}


def build_gguf_tokenizer(reader: GGUFReader) -> tuple[Tokenizer, TokenizerInfo, list[int]]:
    """The tokenizer described by ``tokenizer.ggml.*``, its metadata and its EOS ids."""
    arch = field(reader, "general.architecture")
    model = field(reader, "tokenizer.ggml.model")
    tokens = field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadError("the GGUF file has no tokenizer.ggml.tokens: no vocabulary to use")
    types = field(reader, "tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    pre = field(reader, "tokenizer.ggml.pre", "default")
    add_bos_default = False
    if model == "gpt2":
        tokenizer = _byte_level_bpe(tokens, field(reader, "tokenizer.ggml.merges") or [], pre)
        add_bos_default = pre in _LLAMA3_PRE  # llama.cpp's default for these vocabularies
    elif model == "llama":
        scores = field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        unk_id = field(reader, "tokenizer.ggml.unknown_token_id")
        unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
        prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", True))
        if arch in _MERGES_BY_POSITION:
            # Gemma's scores do not follow its merge order; the pieces' order does. Its
            # pieces of spaces only are stored as spaces but looked up as "▁" runs.
            scores = [-float(index) for index in range(len(tokens))]
            tokens = [_spaces_as_meta(token) for token in tokens]
        tokenizer = _sentencepiece_bpe(tokens, scores, types, unk, prefix)
        add_bos_default = True
    else:
        raise ModelLoadError(
            f"GGUF tokenizer model {model!r} is not supported; supported: 'gpt2' "
            "(byte-level BPE) and 'llama' (SentencePiece BPE)"
        )
    _add_special_tokens(tokenizer, tokens, types)

    def token(key: str) -> str | None:
        token_id = field(reader, f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    info = TokenizerInfo(
        chat_template=field(reader, "tokenizer.chat_template"),
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        pad_token=token("padding_token_id"),
        unk_token=token("unknown_token_id"),
        add_bos_token=bool(field(reader, "tokenizer.ggml.add_bos_token", add_bos_default)),
        add_eos_token=bool(field(reader, "tokenizer.ggml.add_eos_token", False)),
    )
    eos_ids = [
        int(value)
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (value := field(reader, f"tokenizer.ggml.{key}")) is not None
    ]
    return tokenizer, info, list(dict.fromkeys(eos_ids))


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str) -> Tokenizer:
    """GPT-2 style byte-level BPE; the tokens are already spelled in its byte alphabet."""
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges if " " in merge]
    # Llama 3 vocabularies take a whole-word token even where no merge leads to it.
    tokenizer = Tokenizer(models.BPE(vocab, pairs, ignore_merges=pre in _LLAMA3_PRE))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in _LLAMA3_PRE or pre in _QWEN2_PRE:
        split = _LLAMA3_SPLIT if pre in _LLAMA3_PRE else _QWEN2_SPLIT
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:  # "gpt2", "default" and the rest: GPT-2's own split
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(
    tokens: list[str], scores: list[float], types: list[int], unk: str | None, add_prefix: bool
) -> Tokenizer:
    """SentencePiece BPE (llama.cpp's "llama" model): ``▁`` for spaces, byte fallback.

    Spaces are rewritten by a normalizer, as in Llama's own tokenizer.json: it
    prepends ``▁`` to every text segment between special tokens, as llama.cpp does.
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = _merges_from_scores(tokens, scores, types)
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    steps = [normalizers.Replace(" ", "▁")]
    if add_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = None
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode)
    return tokenizer


def _spaces_as_meta(token: str) -> str:
    return "▁" * len(token) if token and not token.strip(" ") else token


def _merges_from_scores(
    tokens: list[str], scores: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece's "best-scoring piece first" rule.

    Every way of splitting a normal piece into two normal pieces becomes a merge,
    ranked by the score of the piece it makes (higher first, then lower id).
    """
    normal = {
        token: index for index, token in enumerate(tokens) if types[index] in (_NORMAL, 0) and token
    }
    ranked = []
    for token, index in normal.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[index], index, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_special_tokens(tokenizer: Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control and unknown tokens become special added tokens, user-defined ones plain
    added tokens: either way the text matches whole, as in llama.cpp."""
    special, user = [], []
    for token, kind in zip(tokens, types):
        if not token:
            continue
        if kind in (_CONTROL, _UNKNOWN):
            special.append(AddedToken(token, special=True, normalized=False))
        elif kind == _USER_DEFINED:
            user.append(AddedToken(token, special=False, normalized=False))
    if special:
        tokenizer.add_special_tokens(special)
    if user:
        tokenizer.add_tokens(user)
