"""A chat-completions endpoint as fast as Python serves one, for measuring batch's own overhead.

The simulator validates, paces and computes every answer, so at high rates it, not batch, is what
a benchmark measures. This server answers every POST with the same small completion over keep-alive
HTTP/1.1 on a bare asyncio protocol: no validation, no limits. Loopback only.

    python bench/fastserver.py --port 8766
"""

from __future__ import annotations

import argparse
import asyncio
import json

BODY = json.dumps({
    "id": "chatcmpl-fast", "object": "chat.completion", "created": 0, "model": "openai/gpt-oss-20b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
    "x_groq": {"id": "req_fast"},
}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\nx-ratelimit-limit-tokens: 1000000000\r\n\r\n" + BODY)


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
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8766)
    asyncio.run(serve(ap.parse_args().port))
