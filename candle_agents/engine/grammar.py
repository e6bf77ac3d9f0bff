"""Constrained decoding: grammars compiled by llguidance, token masks for the sampler.

A :class:`Grammar` is a plain, hashable description of what the output must
look like. The engine compiles it once per distinct grammar into an llguidance
matcher (cached), gives each constrained request its own copy, and before each
sampling step asks the matchers which tokens may come next: a bitmask, one bit
per token, filled by llguidance without the GIL. The sampler forbids the other
tokens in the constrained rows only.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch

from candle_agents.errors import ConfigError

if TYPE_CHECKING:
    from llguidance import LLMatcher
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

GrammarKind = Literal["json_schema", "json_object", "lark", "regex"]
_KINDS = ("json_schema", "json_object", "lark", "regex")

# JSON layout the model may produce. llguidance's default is "flexible"
# whitespace: any run of spaces and newlines between tokens, unbounded. A small
# model left that freedom tends to loop on newlines or indentation until
# max_tokens and never close the object. Fixed separators, the ones Python's
# json.dumps writes (", " and ": ", so the most common in training data), keep
# the output on one line, readable, and leave no whitespace loop to fall into.
# A schema may still override these with its own "x-guidance" options.
# Strings accept any Unicode character unescaped (llguidance's default).
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


@dataclass(frozen=True)
class Grammar:
    """A constraint on generated text, compiled by llguidance.

    Build one with :meth:`json_schema`, :meth:`json_object`, :meth:`lark` or
    :meth:`regex` and pass it as ``GenerationParams(grammar=...)``. The whole
    output must match it; generation stops as soon as it is complete.
    """

    kind: GrammarKind
    source: str  # JSON text of the schema for json_schema; lark text; regex; "" for json_object

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(
                f"grammar kind {self.kind!r} is not one of {', '.join(_KINDS)}", field="grammar"
            )
        if not isinstance(self.source, str):
            raise ConfigError(
                f"grammar source must be a str, got {type(self.source).__name__}", field="grammar"
            )

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> Grammar:
        """Output is JSON valid against ``schema`` (a dict or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"the JSON schema is not valid JSON: {exc}", field="grammar"
                ) from exc
        if schema is True:  # the schema that accepts everything
            schema = {}
        if not isinstance(schema, dict):
            raise ConfigError(
                f"a JSON schema must be a JSON object, got {type(schema).__name__}", field="grammar"
            )
        try:
            # Compact and order-preserving (property order decides output order),
            # so that equal schemas give equal grammars and share a compilation.
            text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"the JSON schema cannot be written as JSON: {exc}", field="grammar"
            ) from exc
        return cls("json_schema", text)

    @classmethod
    def json_object(cls) -> Grammar:
        """Output is any JSON object."""
        return cls("json_object", "")

    @classmethod
    def lark(cls, text: str) -> Grammar:
        """Output matches an llguidance Lark grammar (``start`` rule; ``%json {...}`` inline)."""
        return cls("lark", text)

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        """The whole output matches ``pattern`` (Rust regex syntax)."""
        return cls("regex", pattern)

    def to_llguidance(self) -> str:
        """The llguidance grammar string (not yet checked: compiling does that)."""
        from llguidance import LLMatcher

        if self.kind == "lark":
            return LLMatcher.grammar_from_lark(self.source)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.source)
        source = self.source if self.kind == "json_schema" else '{"type":"object"}'
        try:
            return LLMatcher.grammar_from_json_schema(source, defaults=JSON_OPTIONS)
        except ValueError as exc:
            raise ConfigError(f"invalid JSON schema: {exc}", field="grammar") from exc


class TokenMasks(NamedTuple):
    """Allowed tokens of the constrained rows of one step."""

    bitmask: torch.Tensor  # int32 [rows, words], CPU; bit t % 32 of word t // 32 allows token t
    vocab_size: int  # the tokenizer's: logits columns from here on are never allowed


class GrammarCompiler:
    """Compiles grammars for one tokenizer and fills their token masks.

    ``compile`` runs in callers' threads (thread-safe); masks are filled for
    the engine thread, optionally on a worker thread while the model runs.
    """

    def __init__(self, tokenizer: Tokenizer, eos_token_ids: Iterable[int], cache_size: int = 64):
        import llguidance

        eos = sorted(eos_token_ids)
        try:
            self.tokenizer = llguidance.LLTokenizer(tokenizer.to_str(), eos_token=eos or None)
        except Exception as exc:
            raise ConfigError(
                f"this model's tokenizer cannot be used for constrained decoding: {exc}",
                field="grammar",
            ) from exc
        self.vocab_size: int = self.tokenizer.vocab_size
        self.mask_words = (self.vocab_size + 31) // 32
        self._executor = llguidance.LLExecutor()
        self._cache: OrderedDict[Grammar, LLMatcher | str] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._worker: ThreadPoolExecutor | None = None

    def compile(self, grammar: Grammar) -> LLMatcher:
        """A fresh matcher for ``grammar``; ConfigError(field="grammar") if it is invalid."""
        if not isinstance(grammar, Grammar):
            raise ConfigError(
                f"grammar must be a Grammar, got {type(grammar).__name__}", field="grammar"
            )
        with self._lock:
            entry = self._cache.get(grammar)
            if entry is not None:
                self._cache.move_to_end(grammar)
        if entry is None:
            # Outside the lock: a large grammar may take a while (llguidance drops
            # the GIL), and other callers should not wait for it.
            entry = self._build(grammar)
            with self._lock:
                self._cache[grammar] = entry
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if isinstance(entry, str):
            raise ConfigError(entry, field="grammar")
        with self._lock:
            return entry.deep_copy()  # the cached one never consumes a token

    def _build(self, grammar: Grammar) -> LLMatcher | str:
        from llguidance import LLMatcher

        matcher = LLMatcher(self.tokenizer, grammar.to_llguidance(), log_level=0)
        if matcher.is_error():
            what = grammar.kind.replace("_", " ")
            return f"invalid {what} grammar: {matcher.get_error().strip()}"
        for warning in matcher.get_grammar_warnings():
            logger.warning("%s grammar: %s", grammar.kind, warning)
        return matcher

    # -- masks (engine thread and the worker) -------------------------------------------

    def fill_masks(self, matchers: list[LLMatcher]) -> TokenMasks:
        """The allowed next tokens of each matcher, one bitmask row each, in order."""
        n = len(matchers)
        bitmask = torch.empty((n, self.mask_words), dtype=torch.int32)
        ptr, row_bytes = bitmask.data_ptr(), self.mask_words * 4
        if n == 1:
            matchers[0].unsafe_compute_mask_ptr(ptr, row_bytes)
        else:  # in parallel on llguidance's own threads
            self._executor.unsafe_compute_mask_ptr(
                [(m, i) for i, m in enumerate(matchers)], ptr, row_bytes, n
            )
        return TokenMasks(bitmask, self.vocab_size)

    def start_fill(self, matchers: list[LLMatcher]) -> Future[TokenMasks]:
        """``fill_masks`` on a worker thread; the matchers must not change until it is done."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="candle-grammar")
        return self._worker.submit(self.fill_masks, matchers)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False)


# Byte value -> 8 additive logit masks (0.0 keeps a token, -inf forbids it), per device.
_BYTE_MASKS: dict[torch.device, torch.Tensor] = {}


def _byte_masks(device: torch.device) -> torch.Tensor:
    table = _BYTE_MASKS.get(device)
    if table is None:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        table = torch.zeros(256, 8).masked_fill_(bits == 0, float("-inf")).to(device)
        _BYTE_MASKS[device] = table
    return table


def apply_token_masks(logits: torch.Tensor, rows: list[int], masks: TokenMasks) -> None:
    """Forbid, in place, the tokens ``masks`` does not allow in ``rows`` of ``logits``.

    Row ``rows[j]`` gets mask row ``j``. Columns past the tokenizer's vocabulary
    (the model's logits may be wider) are forbidden too. Other rows are untouched.
    """
    width = logits.shape[1]
    cols = min(width, masks.vocab_size)
    # Unpack through a byte table (one gather) and add: x + 0.0 is x exactly,
    # and adding -inf is ~4x faster than masked_fill with a random bool mask.
    data = masks.bitmask.to(logits.device).view(torch.uint8).flatten().int()
    additive = _byte_masks(logits.device).index_select(0, data).view(len(rows), -1)
    for j, i in enumerate(rows):
        logits[i, :cols].add_(additive[j, :cols])
        if cols < width:
            logits[i, cols:] = float("-inf")


class LazyGrammarCompiler:
    """An engine's GrammarCompiler, built on the first constrained request.

    Building it indexes the tokenizer (~0.25 s), which engines serving no
    constrained request never pay. Callers' threads compile through ``get``;
    the engine thread reads ``built`` (None until then) to fill masks.
    """

    def __init__(self, tokenizer: Tokenizer, eos_token_ids: Iterable[int]) -> None:
        self._tokenizer = tokenizer
        self._eos = frozenset(eos_token_ids)
        self._lock = threading.Lock()
        self.built: GrammarCompiler | None = None

    def get(self) -> GrammarCompiler:
        with self._lock:
            if self.built is None:
                self.built = GrammarCompiler(self._tokenizer, self._eos)
            return self.built

    def close(self) -> None:
        if self.built is not None:
            self.built.close()
