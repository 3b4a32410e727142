"""Getting messages to a broker and commands back: the MQTT client and its connection rules.

The transport knows no payload format: what to publish, the will, what to subscribe to and
how an outbox row becomes a message are the output's (`edge_agent.outputs`), passed in as a
`Wire`; what the outputs may ask of the transport in turn is a `Link`.
"""
