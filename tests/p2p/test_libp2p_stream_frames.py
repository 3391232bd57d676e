"""Persistent request streams, the pure parts (`p2p/libp2p_streams.py` frames,
`p2p/libp2p_channels.py` request ids): golden bytes of the frame format and properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2p.libp2p_channels import compute_free_id
from p2p.libp2p_streams import (
    MAX_REQUEST_ID,
    REFUSAL_ID,
    REQUEST_HEADER,
    RESPONSE_HEADER,
    STATUS_ERROR,
    STATUS_TOO_LARGE,
    encode_request,
    encode_response,
)


def test_frame_format_golden_bytes() -> None:
    assert encode_request(0x01020304, 0x00000100, b"ab") == bytes.fromhex(
        "01020304" "00000100" "00000002" "6162"
    )
    assert encode_response(0x0A0B0C0D, STATUS_TOO_LARGE, b"no") == bytes.fromhex(
        "0a0b0c0d" "02" "00000002" "6e6f"
    )
    assert encode_response(REFUSAL_ID, STATUS_ERROR, b"") == bytes.fromhex("00000000" "01" "00000000")
    assert encode_request(MAX_REQUEST_ID, 0, b"") == bytes.fromhex("ffffffff" "00000000" "00000000")


@given(
    request_id=st.integers(0, MAX_REQUEST_ID), cap=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=64), status=st.sampled_from([0, 1, 2]),
)
def test_frames_carry_their_header_then_body(
    request_id: int, cap: int, body: bytes, status: int
) -> None:
    frame = encode_request(request_id, cap, body)
    assert REQUEST_HEADER.unpack(frame[: REQUEST_HEADER.size]) == (request_id, cap, len(body))
    assert frame[REQUEST_HEADER.size :] == body
    frame = encode_response(request_id, status, body)
    assert RESPONSE_HEADER.unpack(frame[: RESPONSE_HEADER.size]) == (request_id, status, len(body))
    assert frame[RESPONSE_HEADER.size :] == body


@given(
    start=st.integers(1, MAX_REQUEST_ID),
    taken=st.sets(st.integers(MAX_REQUEST_ID - 40, MAX_REQUEST_ID) | st.integers(1, 40), max_size=64),
)
def test_free_request_id_is_never_in_use(start: int, taken: set[int]) -> None:
    request_id = compute_free_id(start, taken.__contains__)
    assert 1 <= request_id <= MAX_REQUEST_ID and request_id not in taken
    if start not in taken:
        assert request_id == start
