"""A chat-completions endpoint as fast as Python serves one, for measuring batch's own overhead.

The simulator validates, paces and computes every answer, so at high rates it, not batch, is what
a benchmark measures. This server answers every POST with the same small completion over keep-alive
HTTP/1.1 on a bare asyncio protocol: no validation, no limits. Loopback only.

    python bench/fastserver.py --port 8766
    python bench/fastserver.py --port 4318 --otlp received.txt

With `--otlp FILE` it is an OpenTelemetry collector that keeps nothing: every POST (/v1/traces,
/v1/metrics) gets an empty 200, and its path and body size are appended to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

BODY = json.dumps({
    "id": "chatcmpl-fast", "object": "chat.completion", "created": 0, "model": "openai/gpt-oss-20b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
    "x_groq": {"id": "req_fast"},
}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\nx-ratelimit-limit-tokens: 1000000000\r\n\r\n" + BODY)
OTLP = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
RECEIVED: Path | None = None  # --otlp: where each request's path and size go


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:  # answer every complete request in the buffer (pipelining-safe)
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            if RECEIVED is not None:
                path = self.buffer[:end].split(b" ", 2)[1].decode()
                with RECEIVED.open("a", encoding="utf-8") as f:
                    f.write(f"{path} {length}\n")
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(RESPONSE if RECEIVED is None else OTLP)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--otlp", type=Path, help="answer as an OTLP/HTTP collector; log what arrives here")
    args = ap.parse_args()
    RECEIVED = args.otlp
    asyncio.run(serve(args.port))
