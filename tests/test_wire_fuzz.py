"""Hostile bytes on the wire: decoding either succeeds or raises the project's own errors,
cheaply (work linear in the input length, counted in executed lines, not seconds), and
every refusal names the bad field."""

import contextlib
import functools
import sys

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vfl.core import wire as serialization
from vfl.core.errors import TransportError, VFLError, WireFormatError
from vfl.core.messages import Label, Message
from vfl.core.wire import BigIntArray

HEAD = ["a", "b", "k", "public", None, False]


def packed(payload=None, head=None, **top):
    """Raw message bytes with a chosen header and payload (no validation on the way out)."""
    obj = {"h": HEAD if head is None else head, "p": {} if payload is None else payload}
    obj.update(top)
    return msgpack.packb(obj, use_bin_type=True)


def ext(code, body):
    return msgpack.ExtType(code, body)


def ndarray_ext(dtype, shape, body=b""):
    return ext(1, msgpack.packb([dtype, shape]) + body)


def bigints_ext(width, count, body=b""):
    return ext(3, msgpack.packb([width, count]) + body)


#: Work allowed per decode, in executed Python lines: a constant plus a linear term in the
#: input length. Counting lines (not seconds) makes the bound deterministic: a shared machine
#: cannot make it flaky, and a decoder that loops on a claimed size (the 2^62 BigIntArray)
#: exceeds it at once. Native work (msgpack, numpy) is bounded separately: msgpack's
#: length limits are the input length, and numpy only views bytes that are present.
BASE_STEPS, STEPS_PER_BYTE = 2_000, 20


def step_budget(data) -> int:
    return BASE_STEPS + STEPS_PER_BYTE * len(data)


class _StepCounter:
    """A ``sys.settrace`` hook counting executed lines; it stops the decode (by raising in
    the traced frame) once the budget is spent and remembers that it did, so a decoder that
    turns the interruption into its own error still fails the test."""

    def __init__(self, limit: int):
        self.limit, self.steps, self.exceeded = limit, 0, False

    def __call__(self, frame, event, arg):
        if event == "line":
            self.steps += 1
            if self.steps > self.limit:
                self.exceeded = True
                raise RuntimeError("decode step budget exceeded")
        return self


def decode_steps(decode, data) -> _StepCounter:
    """Run ``decode(data)`` (VFLErrors swallowed) counting its executed Python lines."""
    counter = _StepCounter(step_budget(data))
    sys.settrace(counter)
    try:
        with contextlib.suppress(VFLError):
            decode(data)
    except RuntimeError:
        if not counter.exceeded:
            raise
    finally:
        sys.settrace(None)
    return counter


def decode_or_refuse(data):
    """Message.from_bytes and serialization.loads either succeed or raise a VFLError
    (anything else fails the test), with work linear in ``len(data)``."""
    for decode in (Message.from_bytes, serialization.loads):
        counter = decode_steps(decode, data)
        assert not counter.exceeded, (counter.steps, len(data), bytes(data[:64]))


# -- the explicit regressions ------------------------------------------------------------------
def test_34_byte_bigint_array_with_count_2_62_is_refused_at_once():
    """Before: ``range(2**62)`` empty slices (width 0 passes ``len(body) == width * count``)."""
    data = packed({"": bigints_ext(0, 2**62)}, head=["", "", "", "public", None, False])
    assert len(data) == 34
    assert decode_steps(Message.from_bytes, data).steps < BASE_STEPS  # first: no hang
    with pytest.raises(WireFormatError, match="BigIntArray width"):
        Message.from_bytes(data)
    with pytest.raises(WireFormatError, match="BigIntArray count"):
        Message.from_bytes(packed({"c": bigints_ext(1, 2**62, b"\x00" * 20)}))


BAD = {
    # BigIntArray extension
    "bigint width 0": (packed({"c": bigints_ext(0, 5)}), "BigIntArray width"),
    "bigint width huge": (packed({"c": bigints_ext(2**40, 0)}), "BigIntArray width"),
    "bigint width bool": (packed({"c": bigints_ext(True, 1, b"\x01")}), "BigIntArray width"),
    "bigint count 2^62": (packed({"c": bigints_ext(4, 2**62, b"\x00" * 8)}),
                          "BigIntArray count"),
    "bigint count negative": (packed({"c": bigints_ext(1, -1)}), "BigIntArray count"),
    "bigint count float": (packed({"c": bigints_ext(1, 1.0, b"\x01")}), "BigIntArray count"),
    "bigint body short": (packed({"c": bigints_ext(4, 3, b"\x00" * 11)}),
                          "BigIntArray count"),
    "bigint header dict": (packed({"c": ext(3, msgpack.packb({"w": 1}))}),
                           "BigIntArray header"),
    "bigint header truncated": (packed({"c": ext(3, b"\x92\x01")}), "BigIntArray header"),
    "bigint header empty": (packed({"c": ext(3, b"")}), "BigIntArray header"),
    "big integer over 1 MiB": (packed({"c": ext(2, b"\x01" * ((1 << 20) + 1))}),
                               "big integer"),
    # ndarray extension
    "ndarray bad dtype string": (packed({"a": ndarray_ext("zz", [1], b"\x00")}),
                                 "ndarray dtype"),
    "ndarray unknown numpy dtype": (packed({"a": ndarray_ext("<f3", [1], b"\x00" * 3)}),
                                    "ndarray dtype"),
    "ndarray object dtype": (packed({"a": ndarray_ext("|O", [1], b"\x00" * 8)}),
                             "ndarray dtype"),
    "ndarray unicode dtype": (packed({"a": ndarray_ext("<U4", [1], b"\x00" * 16)}),
                              "ndarray dtype"),
    "ndarray datetime dtype": (packed({"a": ndarray_ext("<M8[s]", [1], b"\x00" * 8)}),
                               "ndarray dtype"),
    "ndarray void dtype": (packed({"a": ndarray_ext("|V8", [1], b"\x00" * 8)}),
                           "ndarray dtype"),
    "ndarray dtype not a string": (packed({"a": ndarray_ext(8, [1], b"\x00" * 8)}),
                                   "ndarray dtype"),
    "ndarray shape/bytes mismatch": (packed({"a": ndarray_ext("<f8", [3], b"\x00" * 16)}),
                                     "ndarray shape/bytes"),
    "ndarray shape 2^62": (packed({"a": ndarray_ext("<f8", [2**40, 2**22], b"\x00" * 8)}),
                           "ndarray shape/bytes"),
    "ndarray negative dim": (packed({"a": ndarray_ext("<f8", [-1, -8], b"\x00" * 64)}),
                             "ndarray shape"),
    "ndarray dim over limit": (packed({"a": ndarray_ext("<f8", [0, 2**62])}),
                               "ndarray shape"),
    "ndarray shape not a list": (packed({"a": ndarray_ext("<f8", 1, b"\x00" * 8)}),
                                 "ndarray shape"),
    "ndarray shape of floats": (packed({"a": ndarray_ext("<f8", [1.0], b"\x00" * 8)}),
                                "ndarray shape"),
    "ndarray too many dims": (packed({"a": ndarray_ext("<f8", [1] * 40, b"\x00" * 8)}),
                              "ndarray shape"),
    "ndarray header 3 items": (packed({"a": ext(1, msgpack.packb(["<f8", [1], 0]))}),
                               "ndarray header"),
    "ndarray header truncated": (packed({"a": ext(1, b"\x92\xa3<f")}), "ndarray header"),
    # other extensions
    "unknown extension code": (packed({"x": ext(7, b"\x00")}), "extension code"),
    "msgpack timestamp": (packed({"x": msgpack.Timestamp(1, 0)}), "Timestamp"),
    # message header
    "round is a string": (packed(head=["a", "b", "k", "public", "3", False]),
                          "message round"),
    "round is a bool": (packed(head=["a", "b", "k", "public", True, False]),
                        "message round"),
    "round is a float": (packed(head=["a", "b", "k", "public", 1.5, False]),
                         "message round"),
    "round beyond int64": (packed(head=["a", "b", "k", "public", 2**64 - 1, False]),
                           "message round"),
    "sender is an int": (packed(head=[1, "b", "k", "public", None, False]), "message sender"),
    "receiver is None": (packed(head=["a", None, "k", "public", None, False]),
                         "message receiver"),
    "kind is bytes": (packed(head=["a", "b", b"k", "public", None, False]), "message kind"),
    "unknown label": (packed(head=["a", "b", "k", "secret", None, False]), "message label"),
    "label is a list": (packed(head=["a", "b", "k", ["public"], None, False]),
                        "message label"),
    "label_dependent is an int": (packed(head=["a", "b", "k", "public", None, 1]),
                                  "label_dependent"),
    "header too short": (packed(head=["a", "b", "k", "public", None]), "message header"),
    "header is a dict": (packed(head={"sender": "a"}), "message header"),
    "payload is a list": (msgpack.packb({"h": HEAD, "p": [1, 2]}), "message payload"),
    "payload has bytes keys": (msgpack.packb({"h": HEAD, "p": {b"k": 1}}, use_bin_type=True),
                               "message payload"),
    "message is a list": (msgpack.packb([HEAD, {}]), "message: expected a map"),
    "message without payload": (msgpack.packb({"h": HEAD}), "message: expected a map"),
    "message with an extra key": (packed(x=1), "message: expected a map"),
    # msgpack framing
    "truncated": (packed({"v": [1, 2, 3]})[:-2], "truncated"),
    "empty input": (b"", "truncated"),
    "extra data": (packed() + b"\x00\x01", "extra bytes"),
    "reserved byte 0xc1": (b"\xc1", "starts no msgpack value"),
    "invalid utf-8": (b"\x81\xa1h\xa2\xff\xfe", "UTF-8"),
    "integer map key": (b"\x81\x01\x02", "map key"),
    "array claims 2^32-1 items": (b"\xdd\xff\xff\xff\xff\x01\x02", "max_array_len|truncated"),
    "map claims 2^32-1 entries": (b"\xdf\xff\xff\xff\xff\xa1a\x01", "max_map_len|truncated"),
    "str claims 4 GiB": (b"\xdb\xff\xff\xff\xffabc", "max_str_len|truncated"),
    "bin claims 4 GiB": (b"\xc6\xff\xff\xff\xffabc", "max_bin_len|truncated"),
    "ext claims 4 GiB": (b"\xc9\xff\xff\xff\xff\x03abc", "max_ext_len|truncated"),
    "nesting 100k deep": (b"\x91" * 100_000 + b"\xc0", "nesting"),
    "nesting 65 deep": (packed({"v": functools.reduce(lambda acc, _: [acc], range(65), 0)}),
                        "nesting"),
    "not bytes": ("a string", "expected bytes"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_malformed_input_is_refused_naming_the_field(name):
    data, field = BAD[name]
    with pytest.raises(WireFormatError, match=field) as info:
        Message.from_bytes(data)
    assert not decode_steps(Message.from_bytes, data).exceeded
    assert isinstance(info.value, TransportError)  # old callers catch the parent class


def test_valid_edge_cases_still_decode():
    cases = {
        "empty": np.zeros((0, 7), np.float32),
        "scalar": np.array(3.5),
        "bool": np.array([True, False]),
        "complex": np.array([1 + 2j]),
        "big-endian": np.arange(3, dtype=">i4"),
        "bigints": BigIntArray.of([0, 5, 2**300], width=64),
        "no bigints": BigIntArray.of([], width=512),
        "huge int": -(2**5000),
        "nested": [[[[{"deep": [1, 2]}]]]],
    }
    msg = Message("a", "b", "k", Label.MASKED, cases, round=2**63 - 1, label_dependent=True)
    back = Message.from_bytes(msg.to_bytes())
    assert back.round == 2**63 - 1 and back.label_dependent is True
    for key in ("empty", "scalar", "bool", "complex", "big-endian"):
        assert back.payload[key].dtype == cases[key].dtype
        np.testing.assert_array_equal(back.payload[key], cases[key])
    assert back.payload["bigints"] == cases["bigints"]
    assert back.payload["no bigints"] == cases["no bigints"]
    assert back.payload["huge int"] == cases["huge int"]
    assert back.payload["nested"] == cases["nested"]


# -- hypothesis: valid messages, then broken ----------------------------------------------------
_dtypes = st.sampled_from(["<f8", "<f4", "<i8", "<i4", "|u1", "|b1", ">f8", "<c16"])
_arrays = _dtypes.flatmap(
    lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
)
_bigints = st.lists(st.integers(0, 2**256), max_size=4).map(lambda v: BigIntArray.of(v))
_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
    st.text(max_size=8), st.binary(max_size=8), _arrays, _bigints,
)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                  max_size=4),
    max_leaves=12,
)
_messages = st.builds(
    Message,
    sender=st.text(max_size=6), receiver=st.text(max_size=6), kind=st.text(max_size=10),
    label=st.sampled_from(list(Label)),
    payload=st.dictionaries(st.text(max_size=5), _values, max_size=4),
    round=st.none() | st.integers(-(2**63), 2**63 - 1),
    label_dependent=st.booleans(),
).map(lambda m: m.to_bytes())


@st.composite
def _hostile_ext(draw):
    """An extension whose header claims sizes the body does not have."""
    big = st.integers(-(2**63), 2**64 - 1) | st.sampled_from([0, 1, 2**31, 2**62, 2**63 - 1])
    body = draw(st.binary(max_size=24))
    if draw(st.booleans()):
        head = [draw(big), draw(big)]  # BigIntArray [width, count]
        value = ext(3, msgpack.packb(head) + body)
    else:
        dtype = draw(st.sampled_from(["<f8", "|b1", "|O", "zz", "<U2", "V4", "<f3", "", 5]))
        shape = draw(st.lists(big, max_size=4) | big)
        value = ext(1, msgpack.packb([dtype, shape]) + body)
    return packed({"x": value})


@st.composite
def _broken(draw):
    data = bytearray(draw(_messages))
    how = draw(st.sampled_from(["valid", "truncate", "flip", "overwrite", "insert", "append",
                                "ext", "random", "length"]))
    if how == "truncate":
        del data[draw(st.integers(0, max(len(data) - 1, 0))):]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "overwrite":
        i = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=9))
        data[i : i + len(chunk)] = chunk
    elif how == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=9))
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=9))
    elif how == "ext":
        data = bytearray(draw(_hostile_ext()))
    elif how == "random":
        data = bytearray(draw(st.binary(max_size=64)))
    elif how == "length":  # a container or string that claims 2^32 - 1 items or bytes
        marker = draw(st.sampled_from([b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9\xff\xff"]))
        i = draw(st.integers(0, len(data)))
        data[i:i] = marker[:1] + b"\xff\xff\xff\xff" + marker[1:]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_broken())
def test_fuzz_hostile_bytes_fast(data):
    decode_or_refuse(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages)
def test_fuzz_valid_messages_roundtrip(data):
    back = Message.from_bytes(data)
    assert back.to_bytes() == data


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_broken())
def test_fuzz_hostile_bytes_slow(data):
    decode_or_refuse(data)
