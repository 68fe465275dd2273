"""Cloud API prices to compare local cost with: a table shipped with lokal (with the date the
prices were noted) that ``$LOKAL_HOME/prices.json`` overrides entry by entry."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

USER_FILE = "prices.json"


class PriceTableError(ValueError):
    """The price table (shipped or the user's) is not the documented JSON."""


@dataclass(frozen=True)
class ApiPrice:
    """One API model's list price per million tokens."""

    id: str
    provider: str
    model: str
    input_per_m: float
    output_per_m: float

    def per_m_output(self, input_per_output: float) -> float:
        """Price of a million output tokens that came with ``input_per_output`` prompt tokens each."""
        return self.output_per_m + input_per_output * self.input_per_m

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PriceTable:
    """The prices, when they were noted and where they came from."""

    noted: str
    currency: str
    apis: tuple[ApiPrice, ...]
    sources: tuple[str, ...]


def load_prices(home: Path | None = None) -> PriceTable:
    """The shipped table, with ``home/prices.json`` (same format) replacing entries by id."""
    shipped = json.loads(resources.files("lokal.advise").joinpath("prices.json").read_text(encoding="utf-8"))
    noted, currency = str(shipped["noted"]), str(shipped["currency"])
    apis = {p.id: p for p in _parse(shipped, "lokal's price table")}
    sources = ["lokal (shipped)"]
    user = Path(home) / USER_FILE if home is not None else None
    if user is not None and user.is_file():
        try:
            data = json.loads(user.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PriceTableError(f"{user}: not valid JSON: {e}") from e
        for price in _parse(data, str(user)):
            apis[price.id] = price
        noted = str(data["noted"]) if data.get("noted") else f"{noted} (shipped; {user.name} gives no date)"
        currency = str(data.get("currency", currency))
        sources.append(str(user))
    return PriceTable(noted=noted, currency=currency, apis=tuple(apis.values()), sources=tuple(sources))


def _parse(data: Any, where: str) -> list[ApiPrice]:
    if not isinstance(data, dict) or not isinstance(data.get("apis"), list):
        raise PriceTableError(f'{where}: expected {{"noted": ..., "apis": [...]}}')
    prices = []
    for i, item in enumerate(data["apis"]):
        try:
            prices.append(ApiPrice(id=str(item["id"]), provider=str(item.get("provider", "")),
                                   model=str(item.get("model", item["id"])),
                                   input_per_m=float(item["input_per_m"]), output_per_m=float(item["output_per_m"])))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PriceTableError(f"{where}: apis[{i}] needs id, input_per_m and output_per_m ({e})") from e
        price = prices[-1]
        for value in (price.input_per_m, price.output_per_m):
            if not math.isfinite(value) or value < 0:
                raise PriceTableError(f"{where}: apis[{i}] ({price.id}): prices must be numbers of at least 0, "
                                      f"not {value:g}")
    return prices
