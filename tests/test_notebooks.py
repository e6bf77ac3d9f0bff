"""The notebooks run top to bottom in a real Jupyter kernel, and say what they should."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# What a reader must see in each notebook's outputs (the model's own words vary).
EXPECTED = {
    "langchain_quickstart.ipynb": ["'name': 'get_weather'", "sunny and 21 C", "name='Paris'"],
    "llamaindex_rag.ipynb": ["source: The code name of the spring product launch", "42"],
    "agents_with_mcp.ipynb": [
        "time.get_current_time(",
        "from the cache",
        "[response.output_item.done]",
    ],
}


def outputs(book: nbformat.NotebookNode) -> str:
    texts = []
    for cell in book.cells:
        for out in cell.get("outputs", ()):
            texts.append(out.get("text") or "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, tmp_path):
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert not outputs(book), f"{name}: outputs are committed; clear them"
    NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = outputs(book)
    for expected in EXPECTED[name]:
        assert expected in text, f"{name}: {expected!r} not in the outputs:\n{text}"
