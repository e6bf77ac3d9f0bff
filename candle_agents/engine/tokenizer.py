"""Tokenizer wrapper: encode/decode plus the model's chat template (sandboxed jinja2)."""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from candle_agents.engine.detokenizer import byte_token_ids
from candle_agents.engine.loader.base import TokenizerInfo
from candle_agents.errors import TokenizationError

# Used when a model ships no chat template at all.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateRaised(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class TextTokenizer:
    """The engine's view of a tokenizer: ids in, text out, chat messages rendered."""

    def __init__(self, tokenizer: Tokenizer, info: TokenizerInfo) -> None:
        self.tokenizer = tokenizer
        self.info = info
        self.bos_token_id = self._id(info.bos_token)
        self.eos_token_id = self._id(info.eos_token)
        # Some tokenizer.json post-processors add BOS themselves; only add it
        # here when asked for and not already done.
        probe = tokenizer.encode("a", add_special_tokens=True).ids
        self._prepend_bos = (
            info.add_bos_token
            and self.bos_token_id is not None
            and (not probe or probe[0] != self.bos_token_id)
        )

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TokenizationError(f"expected a str to tokenize, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._prepend_bos:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or ""

    @cached_property
    def byte_token_ids(self) -> frozenset[int]:
        """SentencePiece byte-fallback token ids (the detokenizer holds their runs back)."""
        return byte_token_ids(self.tokenizer)

    # -- chat template ------------------------------------------------------------

    @cached_property
    def _template(self):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        return env.from_string(self.info.chat_template or CHATML_TEMPLATE)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.info.chat_template)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render messages with the model's template, passing what transformers passes."""
        try:
            return self._template.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.info.bos_token or "",
                eos_token=self.info.eos_token or "",
                **extra,
            )
        except TemplateRaised as exc:
            raise TokenizationError(f"the chat template rejected the messages: {exc}") from exc
        except (TemplateError, TypeError, KeyError, AttributeError) as exc:
            raise TokenizationError(f"rendering the chat template failed: {exc}") from exc

    def encode_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        # The template writes BOS itself where the model wants one.
        return self.encode(self.render_chat(messages, **kwargs), add_special_tokens=False)
