"""NMEA 0183 (driver `nmea`): GNSS receivers and marine sensors on a serial line."""
