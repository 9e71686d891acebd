"""
Tests for the RFC 9113 rules of L{twisted_rproxy.h2.connection}: each
frame the client may get wrong, sent raw at the server protocol (memory
transport), answered with the connection error (C{GOAWAY} and close) or the
stream error (C{RST_STREAM}, the connection going on) the RFC names; and
what it must accept.
"""

from __future__ import annotations

from typing import Any

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.trial.unittest import SynchronousTestCase

from tests.test_h2_protocol import _Harness
from twisted_rproxy.h2.frames import PREFACE, frameHead
from twisted_rproxy.h2.hpack import encodeField
from twisted_rproxy.h2.limits import (
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    PROTOCOL_ERROR,
    STREAM_CLOSED,
)

_HOLD = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/hold"),
    (b":authority", b"example.com"),
]
_POST = [(b":method", b"POST"), *_HOLD[1:]]
_HELLO = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/hello"),
    (b":authority", b"example.com"),
]

_END = ["END_HEADERS", "END_STREAM"]


def block(fields: list[tuple[bytes, bytes]]) -> bytes:
    """
    A header block of C{fields}, without the dynamic table (so that any
    block may be sent in any order).
    """
    return b"".join(encodeField(name, value) for name, value in fields)


def headers(
    streamID: int, fields: list[tuple[bytes, bytes]], flags: list[str] | None = None
) -> bytes:
    return HeadersFrame(
        streamID, block(fields), flags=_END if flags is None else flags
    ).serialize()


def raw(kind: int, flags: int, streamID: int, payload: bytes) -> bytes:
    return frameHead(len(payload), kind, flags, streamID) + payload


_PING = PingFrame(0, b"pingpong").serialize()


class _Rules(SynchronousTestCase):
    def exchange(self, data: bytes) -> tuple[_Harness, list[Any]]:
        harness = _Harness(self)
        harness.start()
        harness.server.dataReceived(data)
        harness.clock.advance(0)
        return harness, harness.rawFrames()

    def assertConnectionError(self, data: bytes, code: int) -> None:
        harness, frames = self.exchange(data)
        goAways = [f for f in frames if isinstance(f, GoAwayFrame)]
        self.assertEqual([f.error_code for f in goAways], [code], frames)
        self.assertTrue(harness.transport.disconnecting)

    def assertStreamError(self, data: bytes, streamID: int, code: int) -> None:
        harness, frames = self.exchange(data + _PING)
        resets = [
            f.error_code
            for f in frames
            if isinstance(f, RstStreamFrame) and f.stream_id == streamID
        ]
        self.assertEqual(resets, [code], frames)
        self.assertFalse([f for f in frames if isinstance(f, GoAwayFrame)])
        self.assertIn(
            b"pingpong", [f.opaque_data for f in frames if type(f) is PingFrame]
        )
        self.assertFalse(harness.transport.disconnecting)

    def assertAccepted(self, data: bytes, streamID: int) -> list[Any]:
        harness, frames = self.exchange(data)
        self.assertFalse(
            [f for f in frames if isinstance(f, (GoAwayFrame, RstStreamFrame))], frames
        )
        ended = [
            f for f in frames if f.stream_id == streamID and "END_STREAM" in f.flags
        ]
        self.assertTrue(ended, frames)
        return frames


class ConnectionErrorTests(_Rules):
    """
    What is a connection error.
    """

    def test_firstFrameNotSettings(self) -> None:
        harness = _Harness(self)
        harness.server.dataReceived(PREFACE + _PING)
        frames = harness.rawFrames()
        self.assertEqual(frames[-1].error_code, PROTOCOL_ERROR)
        self.assertTrue(harness.transport.disconnecting)

    def test_dataOnIdleStream(self) -> None:
        self.assertConnectionError(DataFrame(1, b"x").serialize(), PROTOCOL_ERROR)

    def test_resetOnIdleStream(self) -> None:
        self.assertConnectionError(RstStreamFrame(1).serialize(), PROTOCOL_ERROR)

    def test_windowUpdateOnIdleStream(self) -> None:
        frame = WindowUpdateFrame(1, window_increment=1).serialize()
        self.assertConnectionError(frame, PROTOCOL_ERROR)

    def test_continuationWithoutHeaders(self) -> None:
        frame = ContinuationFrame(1, block(_HOLD), flags=["END_HEADERS"]).serialize()
        self.assertConnectionError(frame, PROTOCOL_ERROR)

    def test_continuationAfterEndHeaders(self) -> None:
        data = (
            headers(1, _HOLD, ["END_HEADERS"])
            + ContinuationFrame(1, b"", flags=["END_HEADERS"]).serialize()
        )
        self.assertConnectionError(data, PROTOCOL_ERROR)

    def test_continuationOfAnotherStream(self) -> None:
        data = (
            headers(1, _HOLD, ["END_STREAM"])
            + ContinuationFrame(3, b"", flags=["END_HEADERS"]).serialize()
        )
        self.assertConnectionError(data, PROTOCOL_ERROR)

    def test_evenStream(self) -> None:
        self.assertConnectionError(headers(2, _HOLD), PROTOCOL_ERROR)

    def test_streamGoingBack(self) -> None:
        self.assertConnectionError(
            headers(5, _HOLD) + headers(3, _HOLD), PROTOCOL_ERROR
        )

    def test_headersOnClosedStream(self) -> None:
        harness, frames = self.exchange(headers(1, _HELLO))
        self.assertTrue([f for f in frames if "END_STREAM" in f.flags])
        harness.server.dataReceived(headers(1, _HELLO))
        frames = harness.rawFrames()
        self.assertEqual(frames[-1].error_code, STREAM_CLOSED)
        self.assertTrue(harness.transport.disconnecting)

    def test_streamZero(self) -> None:
        for frame in (
            raw(0, 0, 0, b"x"),
            raw(1, 0x5, 0, block(_HOLD)),
            raw(2, 0, 0, b"\x00\x00\x00\x01\x10"),
            raw(3, 0, 0, b"\x00\x00\x00\x00"),
        ):
            self.assertConnectionError(frame, PROTOCOL_ERROR)

    def test_connectionFrameOnStream(self) -> None:
        for frame in (
            raw(4, 0, 1, b""),
            raw(6, 0, 1, b"pingpong"),
            raw(7, 0, 1, b"\x00" * 8),
        ):
            self.assertConnectionError(frame, PROTOCOL_ERROR)

    def test_wrongLengths(self) -> None:
        for frame in (
            raw(6, 0, 0, b"short"),
            raw(8, 0, 0, b"\x00\x01"),
            raw(3, 0, 1, b"\x00"),
        ):
            self.assertConnectionError(frame, FRAME_SIZE_ERROR)

    def test_windowUpdateOfZero(self) -> None:
        self.assertConnectionError(raw(8, 0, 0, b"\x00" * 4), PROTOCOL_ERROR)

    def test_connectionWindowTooLarge(self) -> None:
        frame = WindowUpdateFrame(0, window_increment=2**31 - 1).serialize()
        self.assertConnectionError(frame, FLOW_CONTROL_ERROR)

    def test_badSettings(self) -> None:
        for setting, value, code in (
            (0x2, 2, PROTOCOL_ERROR),
            (0x4, 2**31, FLOW_CONTROL_ERROR),
            (0x5, 16383, PROTOCOL_ERROR),
            (0x5, 2**24, PROTOCOL_ERROR),
        ):
            payload = setting.to_bytes(2, "big") + value.to_bytes(4, "big")
            self.assertConnectionError(raw(4, 0, 0, payload), code)

    def test_pushPromise(self) -> None:
        frame = PushPromiseFrame(1, promised_stream_id=2, data=block(_HOLD))
        frame.flags.add("END_HEADERS")
        self.assertConnectionError(frame.serialize(), PROTOCOL_ERROR)

    def test_paddingTooLong(self) -> None:
        data = headers(1, _POST, ["END_HEADERS"]) + raw(0, 0x8, 1, b"\x05abc")
        self.assertConnectionError(data, PROTOCOL_ERROR)

    def test_blockCutByFrame(self) -> None:
        data = headers(1, _HOLD, ["END_STREAM"]) + _PING
        self.assertConnectionError(data, PROTOCOL_ERROR)


class StreamErrorTests(_Rules):
    """
    What is a stream error: the stream is reset, the connection goes on.
    """

    def test_malformedHeads(self) -> None:
        for fields in (
            [*_HELLO, (b"X-Upper", b"1")],
            [*_HELLO, (b":unknown", b"1")],
            [*_HELLO, (b":status", b"200")],
            [_HELLO[0], (b"accept", b"*/*"), *_HELLO[1:]],
            [*_HELLO, (b":path", b"/again")],
            _HELLO[1:],
            [_HELLO[0], _HELLO[1], (b":path", b"")],
            [_HELLO[0], _HELLO[2]],
            [*_HELLO, (b"connection", b"keep-alive")],
            [*_HELLO, (b"te", b"gzip")],
            [*_HELLO, (b"x-bad", b"a\nb")],
            [*_HELLO, (b":protocol", b"websocket")],
        ):
            self.assertStreamError(headers(1, fields), 1, PROTOCOL_ERROR)

    def test_selfDependency(self) -> None:
        frame = HeadersFrame(1, block(_HOLD), flags=[*_END, "PRIORITY"])
        frame.depends_on = 1
        self.assertStreamError(frame.serialize(), 1, PROTOCOL_ERROR)
        priority = PriorityFrame(3, depends_on=3).serialize()
        self.assertStreamError(priority, 3, PROTOCOL_ERROR)

    def test_priorityLength(self) -> None:
        self.assertStreamError(raw(2, 0, 1, b"\x00" * 4), 1, FRAME_SIZE_ERROR)

    def test_streamWindowUpdateOfZero(self) -> None:
        data = headers(1, _HOLD) + raw(8, 0, 1, b"\x00" * 4)
        self.assertStreamError(data, 1, PROTOCOL_ERROR)

    def test_streamWindowTooLarge(self) -> None:
        data = headers(1, _HOLD) + WindowUpdateFrame(1, 2**31 - 1).serialize()
        self.assertStreamError(data, 1, FLOW_CONTROL_ERROR)

    def test_dataOnHalfClosedStream(self) -> None:
        data = headers(1, _HOLD) + DataFrame(1, b"x").serialize()
        self.assertStreamError(data, 1, STREAM_CLOSED)

    def test_headersOnHalfClosedStream(self) -> None:
        data = headers(1, _HOLD) + headers(1, [(b"x-trailer", b"1")])
        self.assertStreamError(data, 1, STREAM_CLOSED)

    def test_trailersWithoutEnd(self) -> None:
        data = headers(1, _POST, ["END_HEADERS"]) + headers(
            1, [(b"x-trailer", b"1")], ["END_HEADERS"]
        )
        self.assertStreamError(data, 1, PROTOCOL_ERROR)

    def test_pseudoHeaderInTrailers(self) -> None:
        data = headers(1, _POST, ["END_HEADERS"]) + headers(1, [(b":path", b"/")])
        self.assertStreamError(data, 1, PROTOCOL_ERROR)

    def test_bodyLongerThanDeclared(self) -> None:
        data = headers(1, [*_POST, (b"content-length", b"2")], ["END_HEADERS"])
        self.assertStreamError(
            data + DataFrame(1, b"abc").serialize(), 1, PROTOCOL_ERROR
        )

    def test_bodyShorterThanDeclared(self) -> None:
        data = headers(1, [*_POST, (b"content-length", b"5")], ["END_HEADERS"])
        frame = DataFrame(1, b"abc", flags=["END_STREAM"]).serialize()
        self.assertStreamError(data + frame, 1, PROTOCOL_ERROR)

    def test_trailersBeforeDeclaredLength(self) -> None:
        data = headers(1, [*_POST, (b"content-length", b"5")], ["END_HEADERS"])
        data += DataFrame(1, b"abc").serialize() + headers(1, [(b"x-t", b"1")])
        self.assertStreamError(data, 1, PROTOCOL_ERROR)

    def test_dataAfterClientReset(self) -> None:
        data = (
            headers(1, _POST, ["END_HEADERS"])
            + RstStreamFrame(1).serialize()
            + DataFrame(1, b"x").serialize()
        )
        self.assertStreamError(data, 1, STREAM_CLOSED)


class AcceptedTests(_Rules):
    """
    What must be accepted.
    """

    def test_unknownFrameType(self) -> None:
        data = raw(0xEE, 0xFF, 0, b"whatever") + headers(1, _HELLO)
        self.assertAccepted(data, 1)

    def test_unknownSettingAndFlags(self) -> None:
        data = raw(4, 0xF0, 0, b"\x00\xee\x00\x00\x00\x01") + headers(1, _HELLO)
        frames = self.assertAccepted(data, 1)
        self.assertIn(
            True, [type(f) is SettingsFrame and "ACK" in f.flags for f in frames]
        )

    def test_trailers(self) -> None:
        data = (
            headers(1, [(b":method", b"POST"), *_HELLO[1:]], ["END_HEADERS"])
            + DataFrame(1, b"body").serialize()
            + headers(1, [(b"x-checksum", b"1")])
        )
        self.assertAccepted(data, 1)

    def test_padding(self) -> None:
        frame = HeadersFrame(1, block(_HELLO), flags=[*_END, "PADDED"], pad_length=7)
        self.assertAccepted(frame.serialize(), 1)

    def test_priorityOnIdleStream(self) -> None:
        data = PriorityFrame(7, depends_on=0).serialize() + headers(1, _HELLO)
        self.assertAccepted(data, 1)

    def test_teTrailers(self) -> None:
        self.assertAccepted(headers(1, [*_HELLO, (b"te", b"trailers")]), 1)

    def test_dataAfterProxyReset(self) -> None:
        """
        DATA the client sent before it read the proxy's RST_STREAM (the
        response was complete before the body) is ignored.
        """
        harness = _Harness(self)
        harness.site.bodyPolicy = lambda request: (10, True)
        harness.start()
        fields = [(b":method", b"POST"), *_HELLO[1:], (b"content-length", b"100")]
        harness.server.dataReceived(headers(1, fields, ["END_HEADERS"]))
        harness.clock.advance(0)
        frames = harness.rawFrames()
        self.assertEqual(
            [f.error_code for f in frames if isinstance(f, RstStreamFrame)], [0]
        )
        harness.server.dataReceived(DataFrame(1, b"late").serialize() + _PING)
        frames = harness.rawFrames()
        self.assertEqual([type(f) for f in frames], [PingFrame])

    def test_settingsWindowShrinksAndGrows(self) -> None:
        """
        A SETTINGS_INITIAL_WINDOW_SIZE of 0 holds the bodies back, and a
        larger one lets them go.
        """
        data = raw(4, 0, 0, b"\x00\x04\x00\x00\x00\x00") + headers(1, _HELLO)
        harness, frames = self.exchange(data)
        self.assertFalse([f for f in frames if isinstance(f, DataFrame)])
        harness.server.dataReceived(raw(4, 0, 0, b"\x00\x04\x00\x00\x10\x00"))
        harness.clock.advance(0)
        frames = harness.rawFrames()
        self.assertEqual(
            [f.data for f in frames if isinstance(f, DataFrame)], [b"hello /hello"]
        )
