"""Helpers shared by test modules: assertions, tiny models, references, MCP servers."""
