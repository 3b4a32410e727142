"""Runs `edge-agent` under cProfile timed by the main thread's CPU clock, for the rig.

A sampling profiler on a busy 2-core VM charges a thread's waits for the CPU to whatever it
was doing when preempted (a socket send that woke the simulator, mostly); the main thread's
CPU clock does not count those. cProfile adds its own cost to every Python call, so read
the shares, not the absolute times. The stats are written at exit to $PERF_PROFILE_OUT
(default ./agent.prof). Used by bench/profile_rig.sh --cprofile.
"""

from __future__ import annotations

import cProfile
import os
import sys
import time

from edge_agent.cli import main

if __name__ == "__main__":
    profile = cProfile.Profile(time.thread_time)
    try:
        profile.runcall(main, sys.argv[1:])
    finally:
        profile.dump_stats(os.environ.get("PERF_PROFILE_OUT", "agent.prof"))
