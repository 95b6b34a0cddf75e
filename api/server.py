"""The HTTP protocol uvicorn serves the API with: httptools, with the request head (line and headers) bounded.

httptools buffers a request's head until it is complete, without a limit: one unauthenticated request with a
20 MB header was read whole into memory. Here the bytes of a head are counted as they arrive and, past
MAX_HEAD_BYTES (counted per socket read, and once more over the parsed head), the request is answered 431 in
the envelope and the connection closed.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together; browsers and SDKs send well under 8 KiB


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop reading a request whose head is past the limit."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head longer than MAX_HEAD_BYTES."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading_head = True  # a connection starts waiting for its first request's head
        self.head_bytes = 0
        self.head_began_in_chunk = False
        self.head_too_large = False

    def data_received(self, data: bytes) -> None:
        # Counted after the parser has seen the chunk, so a body arriving with its head is not taken for head;
        # a head that began inside this chunk (after a pipelined request) is counted from the next one. The
        # parser so holds at most the limit plus two socket reads (256 KiB each) of an unfinished head.
        self.head_began_in_chunk = False
        super().data_received(data)
        if self.reading_head and not self.head_began_in_chunk and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.refuse_head()

    def on_headers_complete(self) -> None:
        self.reading_head = False
        if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEAD_BYTES:
            # a head that arrived whole in one read: stop the parser; uvicorn answers a parser error with
            # send_400_response, which answers 431 for this one
            self.head_too_large = True
            raise HeadTooLarge
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self.head_too_large:
            self.refuse_head()
        else:
            super().send_400_response(msg)

    def on_message_complete(self) -> None:
        self.reading_head, self.head_bytes, self.head_began_in_chunk = True, 0, True
        super().on_message_complete()

    def refuse_head(self) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps({"code": 431, "message": f"request headers too large: the limit is {MAX_HEAD_BYTES} "
                                                   "bytes"}).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()

