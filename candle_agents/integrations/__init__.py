"""Adapters for agent frameworks: ``langchain`` (ChatCandle) and ``llamaindex`` (CandleLLM).

Import the submodule you need; each needs its framework installed
(``pip install "candle-agents[langchain]"`` or ``"candle-agents[llamaindex]"``).
"""
