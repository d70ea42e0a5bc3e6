"""Live ticker: a background task publishes prices; clients watch them.

    .venv/bin/hubbub run examples.ticker:app --port 8000
    .venv/bin/hubbub consume ws://127.0.0.1:8000 prices:ACME     # protocol clients
    python -m websockets ws://127.0.0.1:8000/ticker/ACME          # or the app's own endpoint

Prices are kept in history, so a client that reconnects recovers what it missed.
"""

import asyncio
import random

import hubbub

SYMBOLS = ("ACME", "GLOBEX", "INITECH")
INTERVAL = 0.5  # seconds between ticks

app = hubbub.App(namespaces={"prices": {"history_size": 100, "history_ttl": 600, "force_recovery": True}})


@app.websocket("/ticker/{symbol}")
class Ticker:
    async def connect(self, ws: hubbub.WebSocket) -> None:
        symbol = ws.params["symbol"].upper()
        if symbol not in SYMBOLS:
            raise hubbub.Disconnect(4004, f"unknown symbol {symbol}")
        await ws.subscribe(f"prices:{symbol}")


async def tick() -> None:
    prices = {symbol: 100.0 for symbol in SYMBOLS}
    while True:
        for symbol in SYMBOLS:
            prices[symbol] = round(prices[symbol] * random.uniform(0.99, 1.01), 2)
            await app.hub.publish(f"prices:{symbol}", {"symbol": symbol, "price": prices[symbol]})
        await asyncio.sleep(INTERVAL)


@app.on_startup
async def start_ticker() -> None:
    app.background(tick())


if __name__ == "__main__":
    app.serve()
