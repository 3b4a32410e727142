"""Eclipse Sparkplug B 3.0 output (`mqtt.format: sparkplug`).

`codec` builds payloads from the project's `sparkplug_b.proto` (generated `sparkplug_b_pb2`),
`session` runs the edge node's rules (births, deaths, seq, bdSeq, aliases, commands, STATE),
`output` makes a session the agent's `Output` from the config. See docs/sparkplug.md.
"""
