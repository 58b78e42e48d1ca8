import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vfl.core import wire as serialization
from vfl.core.errors import TransportError
from vfl.core.messages import Label, Message
from vfl.core.wire import BigIntArray

dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_])


@settings(max_examples=60, deadline=None)
@given(
    arr=dtypes.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3))),
    big=st.integers(min_value=-(2**4100), max_value=2**4100),
)
def test_roundtrip_arrays_and_big_ints(arr, big):
    back = serialization.loads(serialization.dumps({"a": arr, "n": big, "l": [big, 1.5, "x"]}))
    assert back["a"].dtype == arr.dtype and back["a"].shape == arr.shape
    assert back["a"].tobytes() == arr.tobytes()
    assert back["n"] == big
    assert back["l"] == [big, 1.5, "x"]


@given(st.lists(st.integers(min_value=0, max_value=2**4096 - 1), max_size=20))
def test_bigint_array_fixed_width(values):
    packed = BigIntArray.of(values, width=512)
    back = serialization.loads(serialization.dumps({"c": packed}))["c"]
    assert list(back.values) == values and back.width == 512
    # the size depends on the count only, never on the values
    empty = serialization.dumps({"c": BigIntArray.of([0] * len(values), width=512)})
    assert len(serialization.dumps({"c": packed})) == len(empty)


def test_message_roundtrip_keeps_header():
    msg = Message("lab", "hospital", "train.embedding", Label.PLAINTEXT_BY_DESIGN,
                  {"h": np.ones((3, 1), np.float32)}, round=7, label_dependent=False)
    back = Message.from_bytes(msg.to_bytes())
    assert (back.sender, back.receiver, back.kind, back.label, back.round) == (
        "lab", "hospital", "train.embedding", Label.PLAINTEXT_BY_DESIGN, 7)
    np.testing.assert_array_equal(back.payload["h"], msg.payload["h"])


@pytest.mark.parametrize("bad", [object(), np.array([object()], dtype=object), {1, 2}])
def test_unserializable_values_raise(bad):
    with pytest.raises(TransportError):
        serialization.dumps({"x": bad})


def test_garbage_bytes_raise_transport_error():
    with pytest.raises(TransportError):
        Message.from_bytes(b"\xc1\xff\x00garbage")
    with pytest.raises(TransportError):
        BigIntArray.of([-1])
