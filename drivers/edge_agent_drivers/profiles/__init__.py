"""The shipped device profiles: one YAML file per profile (see docs/profiles.md).

Registered in the entry-point group `edge_agent.profiles`, exactly as a third-party package
would register its own directory of profiles.
"""
