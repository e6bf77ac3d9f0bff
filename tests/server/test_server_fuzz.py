"""Schemathesis fuzzes every operation of the OpenAPI schema: no input may cause a 5xx.

The fuzzed app serves a cheap engine (max_model_len 64), so any max_tokens the
fuzzer picks is clamped to a few dozen tokens or refused as too long.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from candle_agents.server import create_app


@pytest.fixture(scope="module")
def fuzzed_schema(small_engine, live_server):
    server = live_server(create_app(small_engine))
    # The fuzzing phase only: it honours max_examples, while the coverage phase walks
    # every boundary of every field (hundreds of generations for the chat body alone).
    config = SchemathesisConfig.from_dict(
        {"phases": {"coverage": {"enabled": False}, "examples": {"enabled": False}}}
    )
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("fuzzed_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_causes_a_server_error(case, small_engine):
    case.call_and_validate(checks=[not_a_server_error], timeout=120)
    assert small_engine.wait_idle(120)
