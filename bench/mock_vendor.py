"""The vendor the benchmark's `fake` provider calls: answers every POST with `{"code": 0}` and remembers when
each task id arrived; `GET /stats` returns those (time, task id) pairs, and `GET /repeats` how many requests
repeated an `Idempotency-Key` already seen — those it drops, as a vendor that deduplicates does (the `fake`
provider declares it does), so a resend of an attempt whose outcome was unknown is never delivered twice.
`POST /batch` takes up to 200 messages of one text (`{"messages": [{..., "key"}]}`) and answers a result
per message (the `fake` provider's `batch_url`). `POST /delay` with a number of seconds makes every later answer wait that long (the fault tests' slow or
hanging vendor); 0 restores prompt answers.

A bare asyncio protocol rather than an ASGI app: the vendor stands in for another company's machine, so
the less of this machine's two cores it takes from the gateway under test, the truer the figures.

    python bench/mock_vendor.py PORT [ADDRESS]     # ADDRESS defaults to 127.0.0.1
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

OK = b'{"code": 0}'
BATCH_MAX = 200  # messages one `POST /batch` may carry, as SMS vendors cap theirs


def response(body: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def take_message(buffer: bytes) -> tuple[str, bytes, bytes] | None:
    """The first whole HTTP/1.1 message in `buffer` (its head and its Content-Length body) and what follows it;
    None until it has all arrived. The load generator reads the answers with it too."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end].decode("latin-1")
    length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")[1:]
                   if line.lower().startswith("content-length:")), 0)
    if len(buffer) < end + 4 + length:
        return None
    return head, buffer[end + 4 : end + 4 + length], buffer[end + 4 + length :]


class Vendor(asyncio.Protocol):
    """HTTP/1.1 keep-alive requests with a Content-Length body, answered in order."""

    received: list[tuple[float, str]] = []
    keys: set[str] = set()
    repeats = 0
    delay = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (message := take_message(self.buffer)) is not None:
            head, body, self.buffer = message
            answer = self.answer(head, body)
            if Vendor.delay and not head.startswith(("GET", "POST /delay")):
                asyncio.get_running_loop().call_later(Vendor.delay, self.reply, answer)
            else:
                self.reply(answer)

    def reply(self, answer: bytes) -> None:
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            self.transport.write(answer)  # type: ignore[attr-defined]

    def answer(self, head: str, body: bytes) -> bytes:
        request_line = head.split(" ", 2)
        if request_line[0] == "GET" and request_line[1] == "/stats":
            return response(json.dumps(self.received).encode())
        if request_line[0] == "GET" and request_line[1] == "/repeats":
            return response(str(Vendor.repeats).encode())
        if request_line[0] == "POST" and request_line[1] == "/delay":
            Vendor.delay = float(body)
            return response(OK)
        if request_line[0] == "POST" and request_line[1] == "/batch":
            return self.batch(json.loads(body)["messages"])
        self.take(header(head, "idempotency-key"), json.loads(body)["task_id"])
        return response(OK)

    def batch(self, messages: list[dict[str, str]]) -> bytes:
        """Up to BATCH_MAX messages of one text, each with its own key: a result per message, in order."""
        if len(messages) > BATCH_MAX:
            return response(json.dumps({"code": "too_many", "message": f"at most {BATCH_MAX} a call"}).encode(),
                            b"400 Bad Request")
        for message in messages:
            self.take(message["key"], message["task_id"])
        return response(json.dumps({"results": [{"code": 0}] * len(messages)}).encode())

    def take(self, key: str, task_id: str) -> None:
        """Deliver a message unless its key was seen: then it is a repeat, dropped."""
        if key and key in self.keys:
            Vendor.repeats += 1
        else:
            self.keys.add(key)
            self.received.append((time.time(), task_id))


def header(head: str, name: str) -> str:
    """The value of header `name` (lower case) in a request head, or ""."""
    for line in head.split("\r\n")[1:]:
        field, _, value = line.partition(":")
        if field.strip().lower() == name:
            return value.strip()
    return ""


async def serve(port: int, address: str = "127.0.0.1") -> None:
    server = await asyncio.get_running_loop().create_server(Vendor, address, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run  # type: ignore[assignment]
    run(serve(int(sys.argv[1]), *sys.argv[2:3]))
