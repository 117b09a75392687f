"""The HTTP/1.1 protocol's pure helpers (the protocol itself is tested on sockets in
``tests/integration/test_http_protocol.py``)."""

from __future__ import annotations

import pytest

from modelyard.api.v2.protocol import _head_of

_HEAD = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n"


def test_a_head_ends_at_its_first_empty_line_and_keeps_nothing_of_the_body() -> None:
    assert _head_of(_HEAD + b"a\r\n\r\nbcd") == _HEAD


@pytest.mark.parametrize(
    "chunk",
    [
        b"POST /v2/models/m/infer HTTP/1.1\nHost: x\r\nContent-Length: 8\r\n\r\n12345678",  # a bare LF
        b"\r\n" + _HEAD,  # an empty line before the request line
        b"GET / HTTP/1.1\r\n\r\n",
        _HEAD[:-2],  # not whole yet
    ],
)
def test_a_head_that_another_parser_could_read_otherwise_is_not_remembered(chunk: bytes) -> None:
    assert _head_of(chunk) is None
