"""Exponential backoff with full jitter, shared by the ENS client and the transfers.

Callers retry only on conditions they name (throttling, 5xx, transport errors); this module
only says how long to wait. Tests pass ``RetryPolicy(base_delay_s=0)`` to remove waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Wait before attempt ``attempt + 1`` (``attempt`` counts from 1).

        A server's own hint (``x-acs-retry-after``) wins when it asks for longer.
        """
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        jittered = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
        if retry_after_s is not None:
            return max(jittered, min(retry_after_s, self.max_delay_s * 6))
        return jittered
