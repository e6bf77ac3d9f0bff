"""An OpenAI-compatible HTTP/SSE server over one engine, with a chat UI at ``/``.

This is the only subpackage that imports FastAPI (the ``[server]`` extra);
``import candle_agents`` never does.

    from candle_agents.server import create_app
    app = create_app(model=None, api_key="secret")   # then: uvicorn.run(app)
"""

from candle_agents.server.app import create_app

__all__ = ["create_app"]
