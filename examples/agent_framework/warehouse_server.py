"""A small warehouse as an MCP server over stdio: look products up, reserve stock.

Run by the agent (`agent.py`) as a child process; it keeps reservations in the
JSON file named by $WAREHOUSE_DB (or in memory), so a caller can check what
the agent really did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

PRODUCTS = {
    "MUG-BLUE": {"name": "blue mug", "price": 7.5, "stock": 12},
    "MUG-RED": {"name": "red mug", "price": 7.5, "stock": 0},
    "TEA-GREEN": {"name": "green tea", "price": 4.25, "stock": 40},
}

server = MCPServer("warehouse")
_db = Path(os.environ["WAREHOUSE_DB"]) if os.environ.get("WAREHOUSE_DB") else None
_reservations: list[dict] = json.loads(_db.read_text()) if _db and _db.exists() else []


def _find(product: str) -> tuple[str, dict]:
    # Small models paraphrase: accept the SKU or any spelling of the name.
    wanted = product.strip().lower().replace("-", " ").replace("_", " ")
    for sku, item in PRODUCTS.items():
        if sku.lower().replace("-", " ") in wanted or item["name"] in wanted:
            return sku, item
    raise ToolError(f"no product matches {product!r}; known: {', '.join(PRODUCTS)}")


@server.tool()
def find_product(name: str) -> str:
    """Look a product up by name: its SKU, price and stock."""
    sku, item = _find(name)
    return f"{item['name']}: SKU {sku}, {item['price']} EUR each, {item['stock']} in stock"


@server.tool()
def reserve(product: str, quantity: int) -> str:
    """Reserve a quantity of a product (its SKU or name) for the customer."""
    sku, item = _find(product)
    if quantity < 1 or quantity > item["stock"]:
        raise ToolError(f"cannot reserve {quantity} of {sku}: {item['stock']} in stock")
    item["stock"] -= quantity
    reservation = {
        "id": f"R-{len(_reservations) + 1:04d}",
        "sku": sku,
        "quantity": quantity,
        "total": round(quantity * item["price"], 2),
    }
    _reservations.append(reservation)
    if _db is not None:
        _db.write_text(json.dumps(_reservations))
    return (
        f"reserved {quantity} x {sku}, reservation {reservation['id']}, "
        f"total {reservation['total']} EUR"
    )


if __name__ == "__main__":
    server.run("stdio")
