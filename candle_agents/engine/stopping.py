"""When a request stops: what one sampled token adds to its text and whether it ends it.

The rules, in order: a ``stop_token_ids`` token, then an EOS token (unless
``ignore_eos``), end it without adding their text; otherwise the token is
detokenized and a stop string, the token limit (``max_tokens`` or the context)
or a grammar that is complete (or rejects the token) ends it. Text held back
as the possible start of a stop string is released when a request ends on
anything but that stop string.
"""

from __future__ import annotations

import logging

from candle_agents.engine.outputs import FinishReason
from candle_agents.engine.sequence import Sequence

logger = logging.getLogger(__name__)


def append_token(seq: Sequence, token: int) -> tuple[str, FinishReason | None]:
    """Add ``token`` to ``seq``'s output; the new text and the finish reason, if it ends."""
    seq.output_token_ids.append(token)
    p = seq.params
    if token in p.stop_token_ids:
        seq.stop_reason = token
        return seq.detokenizer.flush(), "stop"
    if token in seq.eos_token_ids and not p.ignore_eos:
        return seq.detokenizer.flush(), "stop"
    text = seq.detokenizer.add(token)
    if seq.detokenizer.stop_string is not None:
        seq.stop_reason = seq.detokenizer.stop_string
        return text, "stop"
    finish: FinishReason | None = None
    if len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= seq.max_total_tokens:
        finish = "length"
    if seq.matcher is not None and _grammar_ends(seq, token):
        finish = "stop"
    if finish is not None:
        text += seq.detokenizer.flush()
    return text, finish


def _grammar_ends(seq: Sequence, token: int) -> bool:
    """Feed the sampled token to the request's grammar; True when it must stop."""
    matcher = seq.matcher
    if not matcher.consume_token(token):
        # Tokens are masked, so only a bug or a state the mask could not
        # express gets here: end the request rather than the loop.
        logger.warning(
            "request %s: the grammar rejected token %d (%s); finishing it",
            seq.request_id,
            token,
            matcher.get_error(),
        )
        return True
    # Complete: nothing but EOS may follow, so there is no need to sample it
    # (with ignore_eos too: the grammar has the last word).
    return matcher.is_stopped()
