"""Adapters for agent frameworks: ``langchain`` (ChatCandle) and ``llamaindex`` (CandleLLM).

Import the subpackage you need; each needs its framework installed
(``pip install "candle-agents[langchain]"`` or ``"candle-agents[llamaindex]"``).
What both share lives here: ``_engine`` (default model, engine arguments, one adapter
per live engine) and ``_tools`` (closed schemas, tool_choice, history tool calls).
"""
