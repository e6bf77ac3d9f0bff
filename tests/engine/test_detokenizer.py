"""The detokenizer's pieces add up to decoding every id at once, on any vocabulary."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from candle_agents.engine.detokenizer import IncrementalDetokenizer, byte_token_ids
from candle_agents.engine.loader.gguf import load_gguf

GEMMA_GGUF = Path(__file__).parents[1] / "data" / "gguf" / "gemma3-h256-Q4_K_M.gguf"


@pytest.fixture(scope="module")
def spm_tokenizer():
    """A SentencePiece vocabulary with byte fallback (Gemma's kind), from a GGUF file."""
    return load_gguf(GEMMA_GGUF).tokenizer


def stream(tokenizer, ids, stop=()):
    detok = IncrementalDetokenizer(tokenizer, list(stop), True, byte_token_ids(tokenizer))
    pieces = []
    for i in ids:
        pieces.append(detok.add(i))
        if detok.stop_string is not None:
            break  # the engine finishes the sequence here
    return pieces, detok.flush(), detok


def test_byte_fallback_runs_decode_as_a_whole(spm_tokenizer):
    # A valid byte (0x45 'E') followed by invalid ones: decoded together, the run
    # is three U+FFFD, so 'E' must not be released on its own. The tokenizers
    # library's DecodeStream raises "Invalid prefix encountered" here.
    vocab = spm_tokenizer.get_vocab()
    ids = [vocab["<0x45>"], vocab["<0x98>"], vocab["<0x2C>"], vocab["!"], vocab["▁the"]]
    pieces, rest, _ = stream(spm_tokenizer, ids)
    assert pieces[:3] == ["", "", ""]
    assert "".join(pieces) + rest == spm_tokenizer.decode(ids) == "\ufffd" * 3 + "! the"


def test_random_ids_stream_to_the_full_decode(spm_tokenizer):
    rng = random.Random(0)
    # Special tokens (decoded as nothing) are left out: a model does not put
    # one inside a character.
    n = spm_tokenizer.get_vocab_size()
    ids_ = [i for i in range(n) if spm_tokenizer.decode([i], skip_special_tokens=True)]
    for _ in range(300):
        ids = [rng.choice(ids_) for _ in range(rng.randrange(1, 12))]
        pieces, rest, _ = stream(spm_tokenizer, ids)
        assert "".join(pieces) + rest == spm_tokenizer.decode(ids), ids


def test_a_split_character_waits_for_its_last_byte(spm_tokenizer):
    ids = spm_tokenizer.encode("é ok").ids  # é is two byte-fallback tokens here
    pieces, rest, _ = stream(spm_tokenizer, ids)
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + rest == "é ok"


def test_a_stop_string_inside_a_byte_run_cuts_there(spm_tokenizer):
    ids = spm_tokenizer.encode("abc é stop here").ids
    pieces, rest, detok = stream(spm_tokenizer, ids, stop=["é"])
    assert detok.stop_string == "é"
    assert "".join(pieces) + rest == "abc "
