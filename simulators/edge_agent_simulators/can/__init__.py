"""A simulated USB-CAN adapter (slcan) and a DBC describing the frames it sees."""
