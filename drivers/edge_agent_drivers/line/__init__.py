"""Line-based ASCII instruments (driver `line`): scales, analysers, Arduino-style sensors.

Also home of the serial plumbing every line-oriented driver shares (NMEA 0183 is one):
`transport` reads a port through the event loop, `framing` cuts bytes into lines, `tally`
counts and logs what was dropped.
"""
