"""Groq's Batch API endpoints (`/files`, `/batches`), on the client's one HTTP session.

Ids that come back from the server are checked (`plain_id`) before they go into a URL path. List
calls follow OpenAI-style paging (`has_more`, `?after=`); Groq answers in one page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batch.send.client import Client, listed, plain_id, single


class BatchApi:
    """Files and batches at one server."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def upload_file(self, name: str, path: Path) -> dict[str, Any]:
        """Upload a JSONL file of batch requests (purpose "batch"); Groq's file object."""
        data = await self._client.upload("/files", {"purpose": "batch"}, name, path)
        return single(data, "file")

    async def list_files(self) -> list[dict[str, Any]]:
        return await self._list_all("/files", "files")

    async def delete_file(self, file_id: str) -> None:
        await self._client.call("DELETE", f"/files/{plain_id(file_id)}")

    async def download_file(self, file_id: str, into: Path) -> None:
        """A file's content, streamed to `into` (a batch's output can be large)."""
        await self._client.download(f"/files/{plain_id(file_id)}/content", into)

    async def create_batch(self, file_id: str, window: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": window,
                "metadata": dict(metadata)}
        data, _ = await self._client.call("POST", "/batches", json.dumps(body).encode())
        return single(data, "batch")

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        data, _ = await self._client.call("GET", f"/batches/{plain_id(batch_id)}")
        return single(data, "batch")

    async def list_batches(self) -> list[dict[str, Any]]:
        return await self._list_all("/batches", "batches")

    async def _list_all(self, path: str, what: str, *, pages: int = 100) -> list[dict[str, Any]]:
        """Every item of a list. Groq answers with one page; an OpenAI-style server pages with
        `has_more` and `?after=<last id>` (followed for at most `pages` pages)."""
        items: list[dict[str, Any]] = []
        query = ""
        for _ in range(pages):
            data, _ = await self._client.call("GET", path + query)
            page = listed(data, what)
            items += page
            last = data.get("last_id") or (page[-1].get("id") if page else None)
            if data.get("has_more") is not True or not isinstance(last, str):
                break
            query = f"?after={plain_id(last)}"
        return items

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        data, _ = await self._client.call("POST", f"/batches/{plain_id(batch_id)}/cancel")
        return single(data, "batch")
