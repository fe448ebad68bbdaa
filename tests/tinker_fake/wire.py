"""Tiny stdlib protobuf wire codec for the three tinker_public.proto messages the fake needs.

tinker 0.38 sends POST /api/v1/forward_backward as protobuf (ForwardBackwardRequest,
resources/training.py:36) and accepts ForwardBackwardOutput / SampleResponse results ONLY as
protobuf (lib/api_future_impl.py:591). Field numbers: the SDK's own tinker/proto/tinker_public_pb2
(`SampleResponse.DESCRIPTOR.fields`, for instance).
"""

from __future__ import annotations

import struct
import sys
from array import array


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b, i = buf[i], i + 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, value) for each field of one message (wire types 0, 1, 2, 5)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wt = key & 7
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            val, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield key >> 3, val


def _unpack(code: str, data: bytes) -> list:
    a = array(code, data)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


def _pack(code: str, values) -> bytes:
    a = array(code, values)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def _map_entry(buf: bytes) -> tuple[str, bytes]:
    f = dict(_fields(buf))
    return f.get(1, b"").decode(), f.get(2, b"")


def _tensor(buf: bytes) -> list:
    f = dict(_fields(buf))  # 1 dense, 2 sparse_csr, 3 dtype, 4 shape
    if 2 in f:
        raise ValueError("sparse CSR loss_fn_inputs are not supported by this fake")
    code = {1: "f", 2: "q", 3: "i"}.get(f.get(3, 0))  # FLOAT32, INT64, INT32
    if code is None:
        raise ValueError(f"unsupported tensor dtype {f.get(3)}")
    return _unpack(code, f.get(1, b""))


def decode_forward_backward(buf: bytes) -> dict:
    """ForwardBackwardRequest protobuf -> dict (this is what lands in `server.requests`)."""
    out = {"model_id": "", "seq_id": 0, "loss_fn": "", "forward_only": False,
           "loss_fn_config": {}, "data": []}
    for num, val in _fields(buf):
        if num in (1, 4):
            out["model_id" if num == 1 else "loss_fn"] = val.decode()
        elif num in (2, 6):
            out["seq_id" if num == 2 else "forward_only"] = val if num == 2 else bool(val)
        elif num == 5:  # legacy float map; the v2 map (field 7) duplicates it
            k, v = _map_entry(val)
            out["loss_fn_config"][k] = struct.unpack("<d", v)[0] if v else 0.0
        elif num == 3:  # Datum: 1 repeated Chunk, 2 map<string, Tensor>
            tokens, inputs = [], {}
            for dnum, dval in _fields(val):
                if dnum == 1:
                    for cnum, cval in _fields(dval):  # Chunk oneof; 1 = EncodedTextChunk
                        if cnum != 1:
                            raise ValueError("only EncodedTextChunk model inputs are supported")
                        tokens += _unpack("i", dict(_fields(cval)).get(1, b""))
                elif dnum == 2:
                    k, v = _map_entry(dval)
                    inputs[k] = _tensor(v)
            out["data"].append({"model_input": tokens, "loss_fn_inputs": inputs})
    return out


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(num: int, payload: bytes) -> bytes:
    return _uvarint(num << 3 | 2) + _uvarint(len(payload)) + payload


def _int_field(num: int, n: int) -> bytes:
    return _uvarint(num << 3) + _uvarint(n) if n else b""


def encode_forward_backward_output(metrics: dict, per_datum: dict[str, list], n: int) -> bytes:
    """ForwardBackwardOutput: one ArrayRecord of float32 BatchedTensors + double metrics."""
    fields = b""
    for name, arrays in per_datum.items():
        offsets = [0]
        for a in arrays:
            offsets.append(offsets[-1] + 4 * len(a))  # byte offsets, int64
        batched = (_len_field(1, b"".join(_pack("f", a) for a in arrays))
                   + _len_field(2, _pack("q", offsets)) + _int_field(3, 1))  # DTYPE_FLOAT32
        fields += _len_field(2, _len_field(1, name.encode()) + _len_field(2, batched))
    record = _len_field(1, b"ArrayRecord") + fields + _int_field(3, n)
    out = _len_field(1, b"ArrayRecord") + _len_field(2, record)
    for k, v in metrics.items():
        out += _len_field(3, _len_field(1, k.encode()) + _uvarint(2 << 3 | 1)
                          + struct.pack("<d", float(v)))
    return out


def encode_sample_response(seqs: list[tuple[list[int], list[float] | None, str]],
                           prompt_logprobs: list[float | None] | None = None) -> bytes:
    """SampleResponse: its sequences (field 1) and, when asked, the prompt's logprobs (field 2,
    float32 bytes, NaN where there is none)."""
    out = b""
    for tokens, logprobs, reason in seqs:  # StopReason: 0 stop, 1 length; tokens int32
        seq = _int_field(1, 0 if reason == "stop" else 1) + _len_field(2, _pack("i", tokens))
        if logprobs is not None:
            seq += _len_field(3, _pack("f", logprobs))
        out += _len_field(1, seq)
    if prompt_logprobs is not None:
        out += _len_field(2, _pack("f", [float("nan") if lp is None else lp for lp in prompt_logprobs]))
    return out
