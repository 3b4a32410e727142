"""Device simulators: stand-ins reached through the same transports as real devices."""
