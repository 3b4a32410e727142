"""Line-based ASCII instruments (driver `line`): scales, analysers, Arduino-style sensors.

The serial plumbing it shares with every serial driver (the transport, line framing, the
tally of dropped input) is the SDK's: see edge_agent.sdk.
"""
