"""Modbus TCP and RTU (pymodbus 3.x): a pure read planner and decoder, and the I/O driver."""
