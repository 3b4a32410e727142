"""Wired M-Bus (EN 13757-2/-3) meters through a serial M-Bus master."""
