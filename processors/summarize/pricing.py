"""Cost per call from the API's usage field.

The prices are ESTIMATES in USD per million tokens (input, output), copied from the public
price list when this was written; they change, so override them with
``SummarizerSettings.prices_usd_per_mtok`` instead of editing code. A model is matched by
the longest known prefix (``claude-haiku-4-5-20251001`` -> ``claude-haiku-4-5``); an
unknown model costs 0.0 and is logged once by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

DEFAULT_PRICES_USD_PER_MTOK: Final[dict[str, tuple[float, float]]] = {
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
}


class PriceTable:
    def __init__(self, overrides: Mapping[str, tuple[float, float]] | None = None) -> None:
        self._prices = dict(DEFAULT_PRICES_USD_PER_MTOK)
        if overrides:
            self._prices.update(overrides)

    def price(self, model: str) -> tuple[float, float] | None:
        best: str | None = None
        for prefix in self._prices:
            if model.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return None if best is None else self._prices[best]

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self.price(model)
        if price is None:
            return 0.0
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
