"""USB devices through pyusb: HID input reports and vendor bulk endpoints, layout in config."""
