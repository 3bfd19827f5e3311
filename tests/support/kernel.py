"""Run code in a Jupyter kernel over its WebSocket, as JupyterLab does."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import websockets


def execute_request(code: str) -> dict[str, Any]:
    msg_id = uuid.uuid4().hex
    return {
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        "buffers": [],
    }


async def run_code(ws_url: str, code: str, headers: dict[str, str], timeout: float = 60) -> str:
    """Execute ``code`` and return the text/plain result (raises on error or timeout)."""
    request = execute_request(code)
    async with websockets.connect(ws_url, additional_headers=headers, open_timeout=30,
                                  max_size=None) as ws:
        await ws.send(json.dumps(request))
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
                    continue
                kind = msg["msg_type"]
                if kind == "execute_result":
                    return str(msg["content"]["data"]["text/plain"])
                if kind == "error":
                    raise RuntimeError(f"kernel error: {msg['content']['evalue']}")
