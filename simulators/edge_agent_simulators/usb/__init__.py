"""Simulated USB devices behind pyusb's own backend interface (usb.backend.IBackend).

The driver under test calls pyusb exactly as it would on real hardware; only the backend,
chosen by env EDGE_AGENT_USB_BACKEND, answers from these models instead of libusb.
"""
