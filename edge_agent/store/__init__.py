"""The parts of the delivery path that the outboxes are built from.

`rows` (what a stored message is and how it is checked on the way out), `memory` (the
compact in-memory store), `seqs` (seq numbers that outlive any buffer file), `statefile`
(small state files that degrade to memory), `drops` (once-per-episode logging) and
`checkpoint` (the WAL checkpoint thread that also watches the buffer file) and `sqlitefile`
(the buffer file's schema, migration and statements).
"""
