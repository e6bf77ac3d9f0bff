"""When a request stops: what one sampled token adds to its text and whether it ends it.

The rules, in order: a ``stop_token_ids`` token, then an EOS token (unless
``ignore_eos``), end it without adding their text; otherwise the token is
detokenized and a stop string, the token limit (``max_tokens`` or the context)
or a grammar that is complete (or rejects the token) ends it. Text held back
as the possible start of a stop string is released when a request ends on
anything but that stop string.

A request with ``params.reasoning`` is also followed through its reasoning
block here: its tokens are counted, the budget closes it, and the grammar
starts once it is over.
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
    # Only a token sampled under the grammar's mask is the grammar's to consume: not
    # one the engine wrote, nor the one that ended a reasoning block.
    constrained = seq.matcher is not None
    if seq.reasoning_state is not None:
        _follow_reasoning(seq)
    if seq.detokenizer.stop_string is not None:
        seq.stop_reason = seq.detokenizer.stop_string
        return text, "stop"
    finish: FinishReason | None = None
    if len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= seq.max_total_tokens:
        finish = "length"
    if constrained and _grammar_ends(seq, token):
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


def _follow_reasoning(seq: Sequence) -> None:
    """Advance the reasoning block's state after a token was added to the text."""
    control = seq.params.reasoning
    text = seq.detokenizer.text
    if seq.reasoning_state == "pending":
        head = text.lstrip()
        if head.startswith(control.start):
            seq.reasoning_state = "open"
            seq.reasoning_from = text.index(control.start) + len(control.start)
        elif not control.start.startswith(head):
            seq.reasoning_state = "done"  # the model answered without a block
    if seq.reasoning_state == "open":
        seq.reasoning_tokens += 1
        if text.find(control.end, seq.reasoning_from) >= 0:
            seq.reasoning_state = "done"
        else:
            # Searched up to here: next time only where the marker could still end, so
            # a long block is scanned once rather than once per token.
            seq.reasoning_from = max(seq.reasoning_from, len(text) - len(control.end) + 1)
            spent = control.budget is not None and seq.reasoning_tokens >= control.budget
            if spent and not seq.forced:
                seq.forced = list(control.close_ids)  # the budget is spent: close it
    if seq.reasoning_state == "done" and not seq.forced and seq.deferred_matcher is not None:
        # Forced tokens were never offered to the grammar; from here on it constrains.
        seq.matcher, seq.deferred_matcher = seq.deferred_matcher, None
