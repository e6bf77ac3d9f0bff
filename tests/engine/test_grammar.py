"""Constrained decoding: outputs follow their grammar; unconstrained neighbours are untouched."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from candle_agents import ConfigError, Engine, GenerationParams, Grammar
from candle_agents.engine.grammar import TokenMasks, apply_token_masks
from candle_agents.engine.sampler import Sampler
from candle_agents.engine.sequence import Sequence
from tests.support.checks import assert_all_blocks_free

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "minItems": 1,
            "maxItems": 3,
        },
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "color", "tags", "address"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine():
    eng = Engine.from_pretrained(kv_cache_memory=32 * 2**20)
    yield eng
    eng.shutdown()


def chat(engine: Engine, question: str) -> str:
    return engine.apply_chat_template([{"role": "user", "content": question}])


def greedy(grammar: Grammar | None = None, max_tokens: int = 48, **kw) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0.0, grammar=grammar, **kw)


# -- the output follows the grammar -------------------------------------------------------


def test_json_schema_output_validates_greedy_and_sampled(engine):
    prompt = chat(engine, "Describe a person as JSON: name, age, favourite color, tags, address.")
    grammar = Grammar.json_schema(PERSON)
    params = [greedy(grammar, max_tokens=120)] + [
        GenerationParams(max_tokens=120, temperature=0.7, seed=seed, grammar=grammar)
        for seed in (1, 2, 3)
    ]
    results = engine.generate([prompt] * len(params), params)
    for r in results:
        assert r.finish_reason == "stop", r.text
        jsonschema.validate(json.loads(r.text), PERSON)
        # Bounded, single-line layout: the separators json.dumps writes.
        assert "\n" not in r.text and ", " in r.text and ": " in r.text
    assert len({r.text for r in results}) > 1  # the seeds did sample
    assert_all_blocks_free(engine)


def test_json_object(engine):
    prompt = chat(engine, "Return a JSON object with keys city and country for Paris.")
    r = engine.generate(prompt, greedy(Grammar.json_object(), max_tokens=64))
    assert r.finish_reason == "stop"
    assert isinstance(json.loads(r.text), dict)


def test_regex(engine):
    pattern = r"[0-9]{3}-[a-z]{2,4}"
    prompt = chat(engine, "Make up a product code.")
    r = engine.generate(prompt, greedy(Grammar.regex(pattern)))
    assert r.finish_reason == "stop"
    assert re.fullmatch(pattern, r.text), r.text


def test_lark_choice_also_wins_over_ignore_eos(engine):
    prompt = chat(engine, "Is the sky blue? Answer yes or no.")
    grammar = Grammar.lark('start: "yes" | "no"')
    for params in (greedy(grammar), greedy(grammar, ignore_eos=True)):
        r = engine.generate(prompt, params)
        assert r.finish_reason == "stop"
        assert r.text in ("yes", "no")


def test_non_ascii_strings_are_allowed_unescaped(engine):
    schema = {
        "type": "object",
        "properties": {"japanese": {"type": "string", "maxLength": 8}},
        "required": ["japanese"],
        "additionalProperties": False,
    }
    question = "Translate 'good morning' into Japanese. Answer in JSON."
    r = engine.generate(chat(engine, question), greedy(Grammar.json_schema(schema), 64))
    assert r.finish_reason == "stop"
    jsonschema.validate(json.loads(r.text), schema)
    # The grammar itself accepts raw Japanese text (no \\u escapes needed).
    matcher = engine.grammars.get().compile(Grammar.json_schema(schema))
    tokens = engine.tokenize('{"japanese": "おはよう"}', add_special_tokens=False)
    assert matcher.consume_tokens(tokens) and matcher.is_stopped()


def test_logprobs_are_those_of_the_raw_distribution(engine):
    prompt = chat(engine, "Is the sky blue? Answer yes or no.")
    lp = {"logprobs": True, "top_logprobs": 5}
    free = engine.generate(prompt, greedy(max_tokens=1, **lp))
    bound = engine.generate(prompt, greedy(Grammar.lark('start: "maybe"'), **lp))
    assert bound.text == "maybe"
    (a,), (b,) = free.logprobs, bound.logprobs[:1]
    assert [t for t, _, _ in b.top_logprobs] == [t for t, _, _ in a.top_logprobs]
    assert [v for _, _, v in b.top_logprobs] == pytest.approx(
        [v for _, _, v in a.top_logprobs], abs=1e-4
    )


def test_grammar_wins_when_min_tokens_forbids_all_it_allows(engine):
    # The grammar allows one token, which min_tokens forbids (a stop token):
    # the row would have no token left; the grammar's wins, no garbage.
    (x,) = engine.tokenize("x", add_special_tokens=False)
    params = greedy(Grammar.regex("x"), stop_token_ids=[x], min_tokens=3)
    r = engine.generate(chat(engine, "Say x."), params)
    assert r.token_ids == [x] and r.finish_reason == "stop" and r.stop_reason == x


# -- batching, streaming -------------------------------------------------------------------


def test_unconstrained_neighbours_are_token_identical(engine):
    questions = ["Name a fruit.", "What is 2 + 2?", "Say hello.", "Describe the sea."]
    prompts = [chat(engine, q) for q in questions]
    alone = engine.generate(prompts, greedy(max_tokens=24))
    constrained = chat(engine, "Describe a person as JSON.")
    mixed = engine.generate(
        [prompts[0], constrained, *prompts[1:]],
        [greedy(max_tokens=24), greedy(Grammar.json_schema(PERSON), 120)] + [greedy(None, 24)] * 3,
    )
    assert [r.token_ids for r in mixed[:1] + mixed[2:]] == [r.token_ids for r in alone]
    jsonschema.validate(json.loads(mixed[1].text), PERSON)
    assert_all_blocks_free(engine)


def test_streaming_gives_the_same_text_as_generate(engine):
    prompt = chat(engine, "Make up a product code.")
    params = greedy(Grammar.regex(r"[A-Z]{2}-[0-9]{2,4}"))
    deltas = list(engine.stream_sync(prompt, params))
    result = engine.generate(prompt, params)
    assert "".join(d.text for d in deltas) == result.text
    assert deltas[-1].finish_reason == result.finish_reason == "stop"


def test_preempted_requests_keep_their_grammar_state(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "maxLength": 40}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    prompts = [f"{i} The quick brown fox jumps over the lazy dog." for i in range(6)]
    params = GenerationParams(max_tokens=60, temperature=0, grammar=Grammar.json_schema(schema))
    with Engine.from_pretrained(path) as roomy:
        expected = [r.token_ids for r in roomy.generate(prompts, params)]
    # Room for 8 blocks of 16 tokens: the 6 requests cannot all run at once.
    with Engine.from_pretrained(path, kv_cache_memory=8 * 2 * 2 * 16 * 2 * 16 * 4) as tight:
        assert tight.num_blocks == 8
        results = tight.generate(prompts, params)
        assert tight.scheduler.num_preemptions > 0
        assert [r.token_ids for r in results] == expected
        for r in results:
            if r.finish_reason == "stop":
                jsonschema.validate(json.loads(r.text), schema)
        assert_all_blocks_free(tight)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: Grammar.regex("a(b"), "unclosed group"),
        (lambda: Grammar.lark("start: foo"), 'unknown name: "foo"'),
        (lambda: Grammar.json_schema("{not json"), "not valid JSON"),
        (lambda: Grammar("json_schema", "{not json"), "invalid JSON schema"),
        (lambda: Grammar.json_schema({"type": "foo"}), "Invalid type: foo"),
        (lambda: Grammar.json_schema("[1, 2]"), "must be a JSON object"),
        (lambda: Grammar("xml", "<a/>"), "grammar kind 'xml'"),
    ],
    ids=["regex", "lark", "schema-text", "schema-raw", "schema-type", "schema-list", "kind"],
)
def test_invalid_grammar_is_a_config_error_and_queues_nothing(engine, make, problem):
    prompt = chat(engine, "Say hi.")
    with pytest.raises(ConfigError, match=re.escape(problem)) as err:
        engine.generate([prompt, prompt], [greedy(max_tokens=4), greedy(make())])
    assert err.value.field == "grammar"
    assert engine.num_waiting == 0 and engine.num_running == 0
    assert engine.generate(prompt, greedy(max_tokens=4)).usage.completion_tokens == 4
    assert_all_blocks_free(engine)


def test_grammar_must_be_a_grammar():
    with pytest.raises(ConfigError) as err:
        GenerationParams(grammar='{"type": "object"}')
    assert err.value.field == "grammar"


def test_equal_schemas_make_equal_grammars():
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    text = json.dumps(schema, indent=2)
    assert Grammar.json_schema(schema) == Grammar.json_schema(text)
    assert hash(Grammar.json_schema(schema)) == hash(Grammar.json_schema(text))
    # Property order is kept: it is the order of the generated keys.
    assert Grammar.json_schema(schema).source.index('"b"') < Grammar.json_schema(
        schema
    ).source.index('"a"')


# -- the sampler's side, on its own ---------------------------------------------------------


def test_masks_touch_only_their_rows_and_forbid_columns_past_the_vocabulary():
    vocab, width = 70, 80  # the model's logits may be wider than the tokenizer
    logits = torch.randn(3, width)
    before = logits.clone()
    bitmask = torch.zeros(1, 3, dtype=torch.int32)
    bitmask[0, 0] = 1 << 5
    bitmask[0, 2] = 1 << 3  # token 67
    apply_token_masks(logits, [1], TokenMasks(bitmask, vocab))
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed == [5, 67]
    assert torch.equal(logits[1, allowed], before[1, allowed])  # values kept exactly


def test_a_row_the_grammar_leaves_empty_samples_eos():
    s = Sequence("r", [1, 2], GenerationParams(temperature=1.0), frozenset({7}), 64, None)
    s.matcher = object()  # only its presence matters to the sampler
    masks = TokenMasks(torch.zeros(1, 1, dtype=torch.int32), 32)
    out = Sampler(torch.device("cpu"), seed=0)(torch.randn(1, 32), [s], masks)
    assert out.token_ids == [7]
