"""IEC 62056-21 (optical port, mode C) meter readout."""
