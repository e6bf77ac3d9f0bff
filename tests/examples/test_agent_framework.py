"""The agent_framework example, run as a user runs it: it must really reserve the stock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "examples" / "agent_framework" / "agent.py"


def test_agent_finishes_the_multi_step_task(tmp_path):
    db = tmp_path / "reservations.json"
    done = subprocess.run(
        [sys.executable, str(AGENT), "Reserve 3 blue mugs."],
        env={**os.environ, "WAREHOUSE_DB": str(db)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "step 1: find_product(" in out and "SKU MUG-BLUE" in out
    assert "step 2: reserve(" in out
    # The server's own record: the model passed the product and the customer's quantity.
    assert json.loads(db.read_text()) == [
        {"id": "R-0001", "sku": "MUG-BLUE", "quantity": 3, "total": 22.5}
    ]
    assert "prompt tokens from the prefix cache" in out
