"""One owner per port: the connection, the request serialisation and the line's timing.

Several units on one RS-485 line (or behind one TCP gateway) are several devices in the
config but one `Bus`: it holds the connection, lets one request at a time onto it, keeps the
inter-frame silence that RTU needs, and applies each unit's own timeout. Nothing is retried
here: the driver decides per unit whether a silence is worth a second attempt, so a dead
unit costs its neighbours at most one timeout per request.

A TCP port is a `TcpLink` (transport.py: pymodbus's framer and PDUs without its client); a
serial line (and RTU or ASCII framing tunnelled over TCP) is pymodbus's client, `retries=0`.
pymodbus's async clients keep no silence between frames (pymodbus issue #2827: the
maintainers leave it to the application), so the bus waits out t3.5 after every answer or
timeout before the next request. Every answer, on either, must be the answer to its request
(`answers.mismatch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from time import monotonic
from typing import Any, ClassVar

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from edge_agent.sdk import (
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    ProtocolError,
    resolve_port,
)
from edge_agent_drivers.modbus.answers import (
    HoldingRegisters,
    InputRegisters,
    WrongAnswer,
    describe,
    mismatch,
)
from edge_agent_drivers.modbus.config import ModbusDevice
from edge_agent_drivers.modbus.transport import TcpLink

_FRAMERS = {"rtu": FramerType.RTU, "ascii": FramerType.ASCII, "socket": FramerType.SOCKET}
#: requests without an answer after which pymodbus would drop a TCP connection on its own;
#: the runtime decides about reconnects, and one dead unit must not cut off its neighbours
_NEVER_GIVE_UP = 1 << 30


class ExceptionResponse(DeviceError):
    """The unit answered with a Modbus exception response (it is alive, it refused)."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_ADDRESS = 0x02
    ILLEGAL_VALUE = 0x03
    BUSY = 0x06

    def __init__(self, code: int, what: str) -> None:
        super().__init__(f"exception {code:02X} ({_NAMES.get(code, 'unknown')}) on {what}")
        self.code = code
        self.kind = f"exception_{code:02X}"


_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
          4: "server device failure", 5: "acknowledge", 6: "server device busy",
          8: "memory parity error", 10: "gateway path unavailable",
          11: "gateway target failed to respond"}


class Bus:
    """One connection to one port, shared by every device configured on it."""

    #: open buses by (event loop, port): one owner per port within an agent; agents run
    #: in-process side by side (tests) each get their own, bound to their own loop
    _open: ClassVar[dict[tuple[asyncio.AbstractEventLoop, str], Bus]] = {}

    def __init__(self, config: ModbusDevice) -> None:
        self.key = config.port
        self._registered: tuple[asyncio.AbstractEventLoop, str] | None = None
        self.settings = config.line_settings()
        self.silence = config.silence
        self.lock = asyncio.Lock()
        self.users = 0
        self._quiet_since = 0.0  # monotonic time the line last fell silent
        self._heard = False  # bytes arrived during the current attempt
        self._config = config
        self._path = config.port if config.is_tcp else resolve_port(config.port)
        self._build()

    def _build(self) -> None:
        config, framer = self._config, _FRAMERS[self._config.framing]
        self.link: TcpLink | None = None
        self.client: Any = None
        if config.is_tcp:
            host, _, port = config.port.removeprefix("tcp://").rpartition(":")
            host, number = host or "127.0.0.1", int(port or 502)
            if config.framing == "socket":
                self.link = TcpLink(host, number)
                return
            self.client = AsyncModbusTcpClient(  # RTU or ASCII framing tunnelled over TCP
                host, port=number, framer=framer, timeout=config.timeout, retries=0,
                reconnect_delay=0, trace_packet=self._trace)
        else:
            self.client = AsyncModbusSerialClient(
                self._path, framer=framer, baudrate=config.baudrate, parity=config.parity,
                stopbits=config.stopbits, bytesize=config.bytesize, timeout=config.timeout,
                retries=0, reconnect_delay=0, trace_packet=self._trace)
        self.client.set_max_no_responses(_NEVER_GIVE_UP)
        self.client.register(HoldingRegisters)  # register reads decoded in one struct call
        self.client.register(InputRegisters)
        # pymodbus reads the answer timeout from here at every attempt; setting it per
        # request (under the lock) is what gives each unit on the line its own timeout
        self._params = self.client.ctx.comm_params

    @classmethod
    def attach(cls, config: ModbusDevice) -> Bus:
        key = (asyncio.get_running_loop(), config.port)
        bus = cls._open.get(key)
        if bus is None:
            bus = cls._open[key] = cls(config)
            bus._registered = key
        elif bus.settings != config.line_settings():
            raise DeviceError(
                f"{config.port} is already open as {_describe(bus.settings)} by another device; "
                f"this one wants {_describe(config.line_settings())}")
        bus.silence = max(bus.silence, config.silence)
        bus.users += 1
        return bus

    def detach(self) -> None:
        self.users -= 1
        if self.users <= 0:
            key = self._registered
            if key is not None and self._open.get(key) is self:
                del self._open[key]
            self.close()

    def close(self) -> None:
        """Closes the connection (the next `ensure_connected` opens it again)."""
        if self.link is not None:
            self.link.close()
        else:
            self.client.close()

    @property
    def connected(self) -> bool:
        return self.link.connected if self.link is not None else bool(self.client.connected)

    async def ensure_connected(self) -> None:
        async with self.lock:
            if self.connected:
                return
            if self.link is not None:
                if not await self.link.connect(self._config.timeout):
                    raise DeviceDisconnected(f"cannot open {self.key}")
                return
            if not self._config.is_tcp:
                # usb:VID:PID[:SERIAL] -> the tty it has now, at every (re)connect; pymodbus
                # binds the path when the client is made, so a new path needs a new client
                path = resolve_port(self.key)
                if path != self._path:
                    self.client.close()
                    self._path = path
                    self._build()
            if not await self.client.connect():
                raise DeviceDisconnected(f"cannot open {self.key}")

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._heard = True
        return data

    def call(self, request: ModbusPDU, timeout: float) -> Awaitable[ModbusPDU]:
        """One request, one attempt, with the line to itself: awaits the answer, which may
        be an exception response (`refused` raises it as ExceptionResponse), or raises a
        DeviceError.

        No answer at all is a DeviceTimeout; bytes that never made a valid answer (a CRC or
        LRC error, a truncated frame, an answer to another function or of another length)
        are a ProtocolError. Not a coroutine: on TCP the link's own future is awaited, which
        saves a coroutine per request on the agent's hottest path.
        """
        if self.link is not None:  # the link queues requests itself, first come first served
            return self.link.request(request, timeout)
        return self._locked_call(request, timeout)

    async def _locked_call(self, request: ModbusPDU, timeout: float) -> ModbusPDU:
        async with self.lock:
            return await self._client_call(request, timeout)

    async def _client_call(self, request: ModbusPDU, timeout: float) -> ModbusPDU:
        if self.silence:
            wait = self._quiet_since + self.silence - monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        if self._params.timeout_connect != timeout:
            self._params.timeout_connect = timeout
        self._heard = False
        try:
            response = await self.client.execute(False, request)
        except ConnectionException as exc:
            raise DeviceDisconnected(str(exc)) from None
        except ModbusIOException:
            if self._heard:
                raise ProtocolError(
                    f"garbled answer (CRC/framing) to {describe(request)}") from None
            raise DeviceTimeout(
                f"no answer to {describe(request)} within {timeout:g} s") from None
        except ModbusException as exc:
            raise DeviceError(f"{describe(request)}: {exc}") from None
        finally:
            if self.silence:
                self._quiet_since = monotonic()
        wrong = mismatch(request, response)
        if wrong is not None:
            raise WrongAnswer(f"{wrong} in answer to {describe(request)}")
        return response


def refused(response: ModbusPDU, request: ModbusPDU) -> None:
    """Raises an exception response to `request` as ExceptionResponse, carrying its code."""
    if response.function_code & 0x80:
        raise ExceptionResponse(response.exception_code, describe(request))


def _describe(settings: tuple[object, ...]) -> str:
    if len(settings) == 1:  # TCP: the framing is all that must agree
        return f"{settings[0]} framing"
    framing, baudrate, parity, stopbits, bytesize = settings
    return f"{framing} {baudrate} {bytesize}{parity}{stopbits}"
