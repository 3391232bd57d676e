"""Test-wide settings: hypothesis profiles (CI runs derandomized); consensus checks its vote skips."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Before consensus is imported, and inherited by sweep workers and daemons: every counted vote
# that Tendermint skips as not decisive is run through the rules anyway, and one that fires a
# rule fails the run (consensus/tendermint.py `check_skipped_votes`).
os.environ.setdefault("BLYAN_CHECK_SKIPPED_VOTES", "1")

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))
