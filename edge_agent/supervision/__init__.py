"""Device supervision: one runner per device (`device`), the set of them (`supervisor`), and
udev wake-ups for replugged devices (`hotplug`)."""
