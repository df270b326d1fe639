"""The gateway benchmark's baseline: FastAPI + uvicorn doing nothing hookline-specific.

``POST /webhooks/{source}`` reads the body and answers 200 with a JSON body of
the same shape as the gateway's; no verification, no JSON parsing, no Avro,
no Kafka. It is served with the same uvicorn arguments as ``hookline gateway``
(hookline/cli.py), so the ratio hookline/baseline isolates the cost of
hookline's own work from the cost of the HTTP stack on this machine.

Run by bench/gateway.py as ``python bench/_baseline_app.py --port N``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app() -> FastAPI:
    app = FastAPI(title="bench baseline")

    @app.post("/webhooks/{source_name}")
    async def receive_webhook(source_name: str, request: Request) -> JSONResponse:
        """Read the whole body (as the gateway must) and accept it unchecked."""
        body = await request.body()
        return JSONResponse({"accepted": True, "id": f"baseline-{len(body)}"})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same logging setup and uvicorn arguments as `hookline gateway`.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        # The gateway runs on uvloop and httptools (gateway/server.py): so does its baseline.
        loop="uvloop",
        http="httptools",
        proxy_headers=False,
        forwarded_allow_ips=None,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
