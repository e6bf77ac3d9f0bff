"""Engine behaviour: sampling, streaming, stop strings, aborts, errors, concurrency."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from candle_agents import (
    ConfigError,
    ContextLengthError,
    DeviceError,
    Engine,
    EngineConfig,
    GenerationParams,
    ModelLoadError,
    RequestCancelled,
    TokenizationError,
)
from candle_agents.engine.detokenizer import IncrementalDetokenizer
from tests.support.checks import assert_all_blocks_free
from tests.support.tiny_models import build_tiny_model

GREEDY = GenerationParams(max_tokens=24, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = build_tiny_model("llama", tmp_path_factory.mktemp("api"))
    eng = Engine.from_pretrained(str(path), kv_cache_memory=8 * 2**20, max_num_batched_tokens=128)
    yield eng
    eng.shutdown()


def prompt_text() -> str:
    return "The quick brown fox jumps over the lazy dog."


# -- sampling ---------------------------------------------------------------------------


def test_text_held_for_a_stop_string_is_released_when_a_stop_token_ends_it(engine):
    plain = engine.generate(prompt_text(), GREEDY)
    end = plain.token_ids[5]
    ended = engine.generate(
        prompt_text(), GenerationParams(max_tokens=24, temperature=0.0, stop_token_ids=[end])
    )
    text = engine.detokenize(plain.token_ids[:5])
    assert ended.text == text
    # A stop string that the last characters could begin holds them back until the end.
    held = engine.generate(
        prompt_text(),
        GenerationParams(
            max_tokens=24, temperature=0.0, stop_token_ids=[end], stop=[text[-1] + "\x00"]
        ),
    )
    assert held.text == text


def test_logit_bias_forces_and_bans_tokens(engine):
    base = engine.generate(prompt_text(), GenerationParams(max_tokens=4, temperature=0.0))
    forced = engine.generate(
        prompt_text(),
        GenerationParams(max_tokens=4, temperature=0.0, ignore_eos=True, logit_bias={7: 100.0}),
    )
    assert forced.token_ids == [7, 7, 7, 7]
    first = base.token_ids[0]
    banned = engine.generate(
        prompt_text(), GenerationParams(max_tokens=4, temperature=0.0, logit_bias={first: -100.0})
    )
    assert first not in banned.token_ids
    with pytest.raises(ConfigError) as info:
        engine.generate(prompt_text(), GenerationParams(logit_bias={10**9: 1.0}))
    assert info.value.field == "logit_bias"


def test_vanishing_temperature_and_top_p_are_greedy(engine):
    greedy = engine.generate(prompt_text(), GREEDY)
    for params in (
        GenerationParams(max_tokens=24, temperature=5e-324, ignore_eos=True),
        GenerationParams(max_tokens=24, temperature=1.0, top_p=5e-324, ignore_eos=True, seed=3),
    ):
        assert engine.generate(prompt_text(), params).token_ids == greedy.token_ids


def test_seeded_sample_is_the_same_alone_and_in_a_busy_batch(engine):
    params = GenerationParams(max_tokens=24, temperature=1.0, top_p=0.95, seed=1234)
    alone = engine.generate(prompt_text(), params)
    noise = [
        GenerationParams(max_tokens=30, temperature=1.3, seed=None, ignore_eos=True)
        for _ in range(7)
    ]

    async def busy():
        others = [
            asyncio.create_task(engine.agenerate(f"{i} lazy dogs", p)) for i, p in enumerate(noise)
        ]
        await asyncio.sleep(0.02)  # join mid-batch
        target = await engine.agenerate(prompt_text(), params)
        await asyncio.gather(*others)
        return target

    assert asyncio.run(busy()).token_ids == alone.token_ids
    other_seed = engine.generate(prompt_text(), GenerationParams(max_tokens=24, seed=99))
    assert other_seed.token_ids != alone.token_ids
    assert_all_blocks_free(engine)


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(max_tokens=24, temperature=0.8, top_k=1, seed=5, ignore_eos=True),
        GenerationParams(max_tokens=24, temperature=0.8, top_p=1e-6, seed=5, ignore_eos=True),
        GenerationParams(max_tokens=24, temperature=0.8, min_p=1.0, seed=5, ignore_eos=True),
    ],
    ids=["top_k=1", "top_p~0", "min_p=1"],
)
def test_truncation_to_one_token_is_greedy(engine, params):
    assert (
        engine.generate(prompt_text(), params).token_ids
        == engine.generate(prompt_text(), GREEDY).token_ids
    )


def test_top_k_keeps_samples_inside_the_top_k(engine):
    prompt = engine.tokenize(prompt_text())
    params = GenerationParams(max_tokens=1, temperature=5.0, top_k=3, logprobs=True, top_logprobs=3)
    for seed in range(12):
        params.seed = seed
        r = engine.generate(prompt, params)
        top = [t for t, _, _ in r.logprobs[0].top_logprobs]
        assert r.token_ids[0] in top


def test_penalties_change_the_distribution(engine):
    base = engine.generate(prompt_text(), GREEDY).token_ids
    repeat = engine.generate(
        prompt_text(), GenerationParams(max_tokens=24, temperature=0, repetition_penalty=5.0)
    ).token_ids
    freq = engine.generate(
        prompt_text(), GenerationParams(max_tokens=24, temperature=0, frequency_penalty=2.0)
    ).token_ids
    # Greedy on a random model repeats itself; penalties must break that.
    assert len(set(base)) < len(set(repeat)) and len(set(base)) < len(set(freq))


def test_logprobs_match_a_direct_forward_pass(engine):
    import transformers

    prompt = engine.tokenize(prompt_text())
    r = engine.generate(
        prompt, GenerationParams(max_tokens=4, temperature=0, logprobs=True, top_logprobs=5)
    )
    ref = transformers.AutoModelForCausalLM.from_pretrained(engine.config.model)
    with torch.no_grad():
        logits = ref(torch.tensor([prompt + r.token_ids])).logits[0, len(prompt) - 1 : -1]
    expected = torch.log_softmax(logits.float(), -1)
    for i, entry in enumerate(r.logprobs):
        assert entry.token_id == r.token_ids[i]
        assert entry.logprob == pytest.approx(expected[i, entry.token_id].item(), abs=1e-4)
        top_ids = [t for t, _, _ in entry.top_logprobs]
        assert top_ids == expected[i].topk(5).indices.tolist()
        assert entry.top_logprobs[0][0] == entry.token_id  # greedy picks the top one


def test_min_tokens_and_stop_token_ids(engine):
    free = engine.generate(prompt_text(), GenerationParams(max_tokens=12, temperature=0))
    stop_id = free.token_ids[3]
    stopped = engine.generate(
        prompt_text(), GenerationParams(max_tokens=12, temperature=0, stop_token_ids=[stop_id])
    )
    first = free.token_ids.index(stop_id)
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop_id
    held = engine.generate(
        prompt_text(),
        GenerationParams(max_tokens=12, temperature=0, stop_token_ids=[stop_id], min_tokens=8),
    )
    assert stop_id not in held.token_ids[:8] and len(held.token_ids) >= 8


# -- stop strings and detokenization -----------------------------------------------------


def test_stop_string_across_tokens_is_never_emitted(engine):
    full = engine.generate(prompt_text(), GREEDY)
    # A stop string that starts inside one token and ends in a later one.
    pieces = [engine.detokenize([t]) for t in full.token_ids]
    start = len(pieces[0]) + len(pieces[1]) - 1
    stop = full.text[start : start + 4]
    assert len(stop) == 4

    async def run():
        return [
            d
            async for d in engine.stream(
                prompt_text(), GenerationParams(**{**GREEDY.__dict__, "stop": [stop]})
            )
        ]

    deltas = asyncio.run(run())
    text = "".join(d.text for d in deltas)
    assert text == full.text[: full.text.index(stop)]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == stop
    assert all(stop not in d.text for d in deltas)
    assert_all_blocks_free(engine)


@pytest.mark.parametrize("text", ["你好，世界。", "🙂👍🏽 ok", "  leading spaces", "naïve café"])
def test_incremental_detokenizer_handles_multibyte_text(engine, text):
    ids = engine.tokenize(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(engine.tokenizer.tokenizer, stop=[])
    chunks = [detok.add(t) for t in ids]
    assert "".join(chunks) + detok.flush() == text
    assert all("\ufffd" not in c for c in chunks)


def test_streamed_deltas_concatenate_to_the_final_text(engine):
    # High-temperature sampling over a byte-level vocabulary trained on CJK and
    # emoji splits characters across tokens.
    params = GenerationParams(max_tokens=48, temperature=1.5, seed=7, ignore_eos=True)
    final = engine.generate("你好🙂", params)

    async def run():
        return [d async for d in engine.stream("你好🙂", params)]

    deltas = asyncio.run(run())
    assert "".join(d.text for d in deltas) == final.text
    assert [t for d in deltas for t in d.token_ids] == final.token_ids
    decoded = engine.detokenize(final.token_ids)
    if "\ufffd" not in decoded:
        assert final.text == decoded
    assert deltas[-1].usage.completion_tokens == 48


# -- aborts ------------------------------------------------------------------------------


def test_leaving_a_stream_early_aborts_and_frees_blocks(engine):
    async def run():
        stream = engine.stream(prompt_text(), GenerationParams(max_tokens=200, ignore_eos=True))
        async for delta in stream:
            if delta.token_ids:
                break
        await stream.aclose()

    asyncio.run(run())
    assert_all_blocks_free(engine)


def test_abort_from_another_thread(engine):
    params = GenerationParams(max_tokens=400, ignore_eos=True, temperature=0)
    it = engine.stream_sync(prompt_text(), params)
    first = next(it)
    threading.Thread(target=engine.abort, args=(first.request_id,)).start()
    rest = list(it)
    assert rest[-1].finish_reason == "abort"
    assert rest[-1].usage.completion_tokens < 400
    assert_all_blocks_free(engine)


def test_cancelled_agenerate_frees_blocks(engine):
    async def run():
        task = asyncio.create_task(
            engine.agenerate(prompt_text(), GenerationParams(max_tokens=400, ignore_eos=True))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert_all_blocks_free(engine)


# -- errors ------------------------------------------------------------------------------


def test_bad_requests_fail_at_submit_and_the_engine_goes_on(engine):
    too_long = [5] * engine.max_model_len
    with pytest.raises(ContextLengthError, match=str(engine.max_model_len)) as overflow:
        engine.generate(too_long, GREEDY)
    error = overflow.value
    assert isinstance(error, TokenizationError)
    assert (error.num_tokens, error.limit) == (len(too_long), engine.max_model_len)
    with pytest.raises(ConfigError) as err:
        engine.generate("hi", GenerationParams(max_tokens=0))
    assert err.value.field == "max_tokens"
    with pytest.raises(TokenizationError, match="outside the vocabulary"):
        engine.generate([10**9], GREEDY)
    with pytest.raises(TokenizationError, match="empty"):
        engine.generate("", GREEDY)
    assert engine.generate("hi", GREEDY).finish_reason == "length"
    assert_all_blocks_free(engine)


@pytest.mark.parametrize(
    ("field", "value"),
    [("device", "tpu"), ("dtype", "int3"), ("block_size", 7), ("kv_cache_memory", 1.5)],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        EngineConfig(**{field: value})
    assert err.value.field == field and field in str(err.value)


def test_unknown_config_field_is_named():
    with pytest.raises(ConfigError, match="max_batch"):
        EngineConfig.from_kwargs(max_batch=3)


def test_missing_model_and_unavailable_device(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Engine.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(ModelLoadError):
        Engine.from_pretrained(str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA"):
            Engine.from_pretrained(str(tmp_path), device="cuda")


# -- concurrency -------------------------------------------------------------------------


def test_threads_and_several_event_loops_at_once(engine):
    expected = engine.generate(prompt_text(), GREEDY).token_ids
    results: list[list[int]] = []
    lock = threading.Lock()

    def sync_worker():
        r = engine.generate(prompt_text(), GREEDY).token_ids
        with lock:
            results.append(r)

    def loop_worker():
        async def many():
            return await asyncio.gather(
                *(engine.agenerate(prompt_text(), GREEDY) for _ in range(3))
            )

        for r in asyncio.run(many()):
            with lock:
                results.append(r.token_ids)

    threads = [threading.Thread(target=sync_worker) for _ in range(3)]
    threads += [threading.Thread(target=loop_worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 12 and all(r == expected for r in results)
    assert_all_blocks_free(engine)


def test_shared_engines_and_shutdown(engine):
    a = Engine.shared(engine.config.model, kv_cache_memory=2**20)
    b = Engine.shared(engine.config.model, kv_cache_memory=2**20)
    c = Engine.shared(engine.config.model, kv_cache_memory=2**21)
    assert a is b and a is not c
    c.shutdown()
    it = a.stream_sync(prompt_text(), GenerationParams(max_tokens=10_000, ignore_eos=True))
    next(it)
    a.shutdown()
    assert not a.runner.kv_groups and not a.runner.kv_caches  # the cache is released
    with pytest.raises(RequestCancelled):
        list(it)
    with pytest.raises(RequestCancelled):
        a.generate("hi", GREEDY)
    assert Engine.shared(engine.config.model, kv_cache_memory=2**20) is not a
    Engine.shared(engine.config.model, kv_cache_memory=2**20).shutdown()


def test_sharded_safetensors_folder(tmp_path, engine):
    import shutil

    import transformers

    from candle_agents.engine.loader.hf import load_hf_folder

    src = engine.config.model
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{src}/{name}", tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert load_hf_folder(tmp_path).num_weights == len(model.state_dict())
    with Engine.from_pretrained(str(tmp_path), kv_cache_memory=2**22) as sharded:
        assert (
            sharded.generate(prompt_text(), GREEDY).token_ids
            == engine.generate(prompt_text(), GREEDY).token_ids
        )


def test_agenerate_reports_prompt_ids_and_usage(engine):
    prompt = engine.tokenize(prompt_text())
    result = asyncio.run(engine.agenerate(prompt, GREEDY))
    assert result.prompt_token_ids == prompt
    assert result.usage.prompt_tokens == len(prompt)
    assert result.usage.completion_tokens == len(result.token_ids) == GREEDY.max_tokens


def test_generate_takes_one_params_per_prompt(engine):
    prompts = [[5, 6, 7], [8, 9]]
    params = [GenerationParams(max_tokens=n, ignore_eos=True) for n in (3, 5)]
    results = engine.generate(prompts, params)
    assert [len(r.token_ids) for r in results] == [3, 5]
    with pytest.raises(ConfigError, match="1 GenerationParams for 2 prompts"):
        engine.generate(prompts, params[:1])
    # One bad prompt in a list submits none of them.
    with pytest.raises(TokenizationError):
        engine.generate([[5, 6], []], GenerationParams(max_tokens=2))
    assert_all_blocks_free(engine)


def test_default_model_names_share_one_config_key():
    from candle_agents.engine.config import EngineConfig

    keys = {
        EngineConfig.from_kwargs(model=m).key() for m in (None, "default", "SmolLM2-135M-Instruct")
    }
    assert len(keys) == 1
    assert EngineConfig.from_kwargs(model="other.gguf").key() not in keys
