"""Finding meters on an M-Bus line: a primary address sweep and a secondary address search.

Both only read (SND_NKE, REQ_UD2, select), bounded in time per address. The secondary search
walks the identification number digit by digit: a select with wildcards that one meter answers
is read at once; when the answer to the read is garbled (several meters drove the bus
together), the search descends to the next digit. Meters left at the same primary address, a
common commissioning fault, are found this way too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from edge_agent.sdk import DeviceError, DeviceTimeout
from edge_agent_drivers.mbus import frames, line, records


@dataclass(frozen=True, slots=True)
class Found:
    address: int | None  # the primary address it answered at (None: found by secondary)
    identification: str
    manufacturer: str
    medium: int


def _read(held: line.MbusLine, address: int, timeout: float) -> Found | None:
    answer = held.exchange(frames.req_ud2(address, True), timeout, expect="long")
    telegram = records.decode(answer)
    return Found(answer.address if address != frames.SELECTED else None,
                 telegram.identification, telegram.manufacturer, telegram.medium)


def primary_sweep(held: line.MbusLine, addresses: range, timeout: float) -> Iterator[Found]:
    for address in addresses:
        try:
            held.exchange(frames.snd_nke(address), timeout, expect="ack")
            found = _read(held, address, timeout)
        except (DeviceTimeout, frames.FrameError):
            continue
        except DeviceError:  # garbled: two meters at this address
            yield Found(address, "collision", "", 0)
            continue
        if found is not None:
            yield found


def secondary_search(held: line.MbusLine, timeout: float, prefix: str = "") -> Iterator[Found]:
    pattern = prefix + "F" * (8 - len(prefix))
    try:
        held.exchange(frames.select(pattern), timeout, expect="ack")
    except DeviceTimeout:
        return  # nobody matches
    except DeviceError:
        pass  # several selects collided: look closer
    else:
        try:
            found = _read(held, frames.SELECTED, timeout)
        except DeviceTimeout:
            found = None
        except (DeviceError, frames.FrameError):
            found = None  # several read answers collided
        else:
            held.send(frames.snd_nke(frames.SELECTED))
            if found is not None:
                yield found
                if len(prefix) == 8:
                    return
                # one answered: others under this prefix would have collided with it
                return
        held.send(frames.snd_nke(frames.SELECTED))
    if len(prefix) == 8:
        return
    for digit in "0123456789":
        yield from secondary_search(held, timeout, prefix + digit)
