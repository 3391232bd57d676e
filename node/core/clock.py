"""Wall-clock time for block timestamps (the simulator injects its own clock instead)."""

from __future__ import annotations

import time


class WallClock:
    """Block timestamps from the system clock (only `node/` reads it)."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)
