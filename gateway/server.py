"""How the gateway is served: uvicorn on uvloop and httptools, errors in the app's JSON shape.

uvloop and httptools take a good share of the per-request CPU off the event
loop compared with asyncio and h11; the loop is also where publishing waits
for Kafka, so what it saves is headroom that keeps acknowledgements timely
under load. A request so malformed that uvicorn refuses it before the app
sees it (a bad Content-Length, a broken request line) gets the same
``{"detail": ...}`` body as every other refusal, not a plain-text one.
"""

from __future__ import annotations

import gc

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

INVALID_REQUEST = b'{"detail":"invalid HTTP request"}'


class JsonErrorsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering unparseable requests with JSON."""

    def send_400_response(self, msg: str) -> None:
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(INVALID_REQUEST)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                INVALID_REQUEST,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


def serve(app: FastAPI, host: str, port: int, forwarded_allow_ips: str | None) -> None:
    # Everything imported and built so far (FastAPI, pydantic, aiokafka, the
    # schemas: ~70 000 objects) lives as long as the process. Frozen, the
    # cyclic GC no longer walks it in each full collection, which otherwise
    # stalled every request in flight for tens of milliseconds under load.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=JsonErrorsProtocol,
        log_config=None,  # keep our logging setup
        access_log=False,  # access logs would print query strings, i.e. tokens
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or None,
        timeout_graceful_shutdown=10,
    )
