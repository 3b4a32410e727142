"""What makes bytes from a unit the answer to the request that was sent. Pure, no I/O.

pymodbus's PDU classes decode what they are given: an FC04 answer to an FC03 read decodes as
input registers, and a register read answered with more or fewer registers than asked
decodes as that many. Both are a unit (or a gateway) out of step with the master, so any
value taken from them could belong to another request; here they are protocol errors, on
every transport.

Register answers are decoded with one `struct` call instead of pymodbus's loop of one
`struct.unpack` per register (about 25 us for 50 registers, half of it building a debug
string that is thrown away), by subclasses of pymodbus's response classes that
`fast_decoder()` registers with a `DecodePDU`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from edge_agent.sdk import ProtocolError

#: function code -> what a request of that kind is called in error messages
NAMES = {1: "read coils", 2: "read discrete inputs", 3: "read holding registers",
         4: "read input registers", 5: "write coil", 6: "write register",
         15: "write coils", 16: "write registers"}


class WrongAnswer(ProtocolError):
    """A well-formed answer that is not the answer to the request (see `mismatch`).

    The unit is there and answering, so it is not a silence: the block is bad and counted
    (kind `protocol`), and the poll goes on with the next block.
    """


@lru_cache(maxsize=128)
def _words(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


class _Registers:
    """decode() for a register read answer: byte count, then exactly that many bytes."""

    registers: Sequence[int]
    #: the registers as the answer carried them (big-endian bytes), for the block decoder
    data: bytes | None = None

    def decode(self, data: bytes) -> None:
        size = data[0] if data else -1
        if size < 0 or size % 2 or len(data) != size + 1:
            raise ModbusIOException(f"byte count {size} does not match the {len(data) - 1} "
                                    f"data bytes of the answer")
        self.data = data[1:]
        self.registers = _words(size // 2).unpack_from(data, 1)


class HoldingRegisters(_Registers, ReadHoldingRegistersResponse):
    """ReadHoldingRegistersResponse, decoded in one struct call."""


class InputRegisters(_Registers, ReadInputRegistersResponse):
    """ReadInputRegistersResponse, decoded in one struct call."""


def fast_decoder() -> DecodePDU:
    """A client-side DecodePDU whose register answers decode in one struct call."""
    decoder = DecodePDU(False)
    decoder.register(HoldingRegisters)
    decoder.register(InputRegisters)
    return decoder


def decode(decoder: DecodePDU, pdu: bytes) -> ModbusPDU | None:
    """The response PDU in `pdu` (function code first), None when it does not decode.

    The common answers are looked up and decoded directly; DecodePDU.decode formats a debug
    line for every answer, which costs more than decoding a 50-register read.
    """
    if not pdu:
        return None
    code = pdu[0]
    try:
        if code & 0x80:
            response: ModbusPDU = ExceptionResponse(code & 0x7F)
            response.decode(pdu[1:])
            return response
        response_class = decoder.pdu_table.get(code, (None, None))[1]
        if response_class is None or response_class.sub_function_code >= 0:
            return decoder.decode(pdu)  # rare codes (diagnostics ...): pymodbus's own way
        response = response_class()
        response.decode(pdu[1:])
        return response
    except (ModbusIOException, ValueError, IndexError, struct.error):
        return None


def mismatch(request: ModbusPDU, response: ModbusPDU) -> str | None:
    """Why `response` cannot be the answer to `request`; None when it is.

    An exception response must carry the request's function code; a read answer must have
    the request's function code and exactly the registers (or the whole bytes of bits)
    asked for; a write answer must echo the address (and, for FC15/16, the count).
    """
    code = request.function_code
    if response.function_code & 0x80:
        got = response.function_code & 0x7F
        return None if got == code else f"exception for function {got:02X}"
    if response.function_code != code:
        return f"answer with function {response.function_code:02X}"
    if code in (3, 4):
        got = len(response.registers)
        return None if got == request.count else f"{got} registers"
    if code in (1, 2):
        got = len(response.bits)
        return None if got == 8 * ((request.count + 7) // 8) else f"{got} bits"
    if response.address != request.address:
        return f"answer for address {response.address}"
    if code in (15, 16) and response.count != request.count:
        return f"answer for {response.count} values"
    if code == 6 and list(response.registers) != list(request.registers):
        return f"answer with value {list(response.registers)}"
    return None


def describe(request: ModbusPDU) -> str:
    """The request, for error messages (built only when there is an error)."""
    name = NAMES.get(request.function_code, f"function {request.function_code:02X}")
    count = f" x{request.count}" if request.function_code in (1, 2, 3, 4, 15, 16) else ""
    return f"{name} at {request.address}{count} (unit {request.dev_id})"
