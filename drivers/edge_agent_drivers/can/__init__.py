"""CAN buses through python-can, signals decoded from a DBC file with cantools."""
