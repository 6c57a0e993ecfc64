"""What a ModelInferRequest would cost to parse, read from its bytes before protobuf parses it.

Parsing expands some encodings a lot, before any of inferd's checks can run: each empty
``inputs`` entry (2 bytes) becomes a message and a Python wrapper of ~500 bytes, a 1-byte
varint in ``int64_contents`` becomes 8 bytes, each 2-byte ``bytes_contents`` entry a 16-byte
view and then a Python object. One message near a 256 MiB limit could so cost tens of GB.
``check`` walks the message's fields (C-speed counting for packed numbers) and refuses, with
RESOURCE_EXHAUSTED, a message with more top-level fields than ``MAX_FIELDS`` or more values
(shape dims, parameters, ``contents`` values) than the request's element limit. Tensor bytes
in ``raw_input_contents`` are skipped by their length, so a usual request costs a few field
reads; only messages over ``SCAN_MIN_BYTES`` are walked at all (below it the worst expansion
is a few MB).
"""

from __future__ import annotations

import numpy as np

from ...protocol.errors import InvalidArgument, ResourceExhausted
from .grpc_wire import read_varint
from .request_limits import too_many_elements

SCAN_MIN_BYTES = 64 * 1024
# Top-level fields of one request: tensors, requested outputs, raw entries, parameters.
MAX_FIELDS = 65536
_CHUNK = 16 * 1024 * 1024  # packed varints are counted in chunks: bounded temporary memory
# InferTensorContents: field number -> bytes per packed value (0: varints, counted by byte).
_PACKED = {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 4, 7: 8}
_INPUTS, _OUTPUTS = 5, 6
_SHAPE, _CONTENTS = 3, 5
_BYTES_TAG = 8 << 3 | 2  # InferTensorContents.bytes_contents


def _count_varints(data: bytes, start: int, stop: int) -> int:
    """Values in a packed varint field: the bytes that end a varint (high bit clear)."""
    n = 0
    for lo in range(start, stop, _CHUNK):
        chunk = np.frombuffer(data, np.uint8, min(_CHUNK, stop - lo), lo)
        n += int(np.count_nonzero(chunk < 0x80))
    return n


class _Walk:
    __slots__ = ("data", "limit", "values")

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.limit, self.values = data, limit, 0

    def add(self, n: int) -> None:
        self.values += n
        if self.values > self.limit:
            raise too_many_elements(self.limit, "the ModelInferRequest")

    def skip(self, wire: int, pos: int, stop: int) -> tuple[int, int]:
        """The payload span of a field of ``wire`` type at ``pos``; raises for groups and
        invalid wire types, which no ModelInferRequest contains."""
        if wire == 2:
            size, pos = read_varint(self.data, pos)
            end = pos + size
        elif wire == 0:
            _, end = read_varint(self.data, pos)
        elif wire == 1:
            end = pos + 8
        elif wire == 5:
            end = pos + 4
        else:
            raise InvalidArgument(f"the request is not a valid ModelInferRequest message (wire type {wire})")
        if end > stop:
            raise IndexError
        return pos, end

    def message(self) -> None:
        data = self.data
        pos, stop, fields = 0, len(data), 0
        while pos < stop:
            tag, pos = read_varint(data, pos)
            fields += 1
            if fields > MAX_FIELDS:
                raise ResourceExhausted(
                    f"the ModelInferRequest has more than {MAX_FIELDS} top-level fields (tensors, outputs, parameters)"
                )
            start, pos = self.skip(tag & 7, pos, stop)
            if tag >> 3 in (_INPUTS, _OUTPUTS) and tag & 7 == 2:
                self.tensor(start, pos)

    def tensor(self, pos: int, stop: int) -> None:
        data = self.data
        while pos < stop:
            tag, pos = read_varint(data, pos)
            number, wire = tag >> 3, tag & 7
            start, pos = self.skip(wire, pos, stop)
            if number == _SHAPE and wire == 2:
                self.add(_count_varints(data, start, pos))
            elif number == _CONTENTS and wire == 2:
                self.contents(start, pos)
            else:
                self.add(1)  # a dim, a parameter, a name: each is at least one value to build

    def contents(self, pos: int, stop: int) -> None:
        data = self.data
        left = self.limit - self.values
        n = 0
        while pos < stop:
            # bytes_contents elements shorter than 128 bytes, the many-small-fields case, in
            # a tight loop: a refusal of millions of them should cost under a second.
            if data[pos] == _BYTES_TAG and pos + 1 < stop and data[pos + 1] < 0x80:
                pos += 2 + data[pos + 1]
                n += 1
                if n > left:
                    break
                continue
            if n:
                self.add(n)
                left, n = self.limit - self.values, 0
            tag, pos = read_varint(data, pos)
            number, wire = tag >> 3, tag & 7
            start, pos = self.skip(wire, pos, stop)
            width = _PACKED.get(number)
            if width is None or wire != 2:
                self.add(1)  # a bytes_contents element, or one unpacked number
            elif width:
                self.add((pos - start) // width)
            else:
                self.add(_count_varints(data, start, pos))
        if pos > stop:
            raise IndexError  # an element runs past its message: the parser reports it
        self.add(n)


def check(data: bytes, max_elements: int) -> None:
    """Refuse ``data`` if parsing it would build more than ``max_elements`` values or it has
    more than MAX_FIELDS top-level fields. Malformed bytes are left to the parser to report."""
    if len(data) <= SCAN_MIN_BYTES:
        return
    try:
        _Walk(data, max_elements).message()
    except IndexError:
        pass  # truncated: the parser refuses it (before expanding what follows)


def top_level_strings(data: bytes) -> dict[int, bytes]:
    """The length-delimited top-level fields 1-3 (model name, version, id) of a message too
    big to parse safely, for an error report; {} if they cannot be read."""
    found: dict[int, bytes] = {}
    walk = _Walk(data, 0)
    pos, stop = 0, len(data)
    try:
        for _ in range(MAX_FIELDS):
            if pos >= stop or len(found) == 3:
                break
            tag, pos = read_varint(data, pos)
            start, pos = walk.skip(tag & 7, pos, stop)
            if tag & 7 == 2 and 1 <= tag >> 3 <= 3 and pos - start <= 1024:
                found.setdefault(tag >> 3, data[start:pos])
    except (IndexError, InvalidArgument):
        pass
    return found
