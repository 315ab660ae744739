"""Exponential backoff with full jitter, shared by the ENS client and the transfers.

Callers retry only on conditions they name (throttling, 5xx, transport errors); this module
only says how long to wait. Tests pass ``RetryPolicy(base_delay_s=0)`` to remove waiting.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import trio

from .errors import TransferError

log = logging.getLogger("imagesync")


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


class FailureBudget:
    """How long to keep trying one transfer: a fresh budget after real progress, never forever.

    Failures count only while less than ``progress_bytes`` arrived since the last one, so a link
    that drops every few KiB gives up instead of crawling for days; a long transfer that keeps
    moving gets a fresh set of attempts after each stretch of progress. Waits grow exponentially.
    """

    def __init__(self, retry: RetryPolicy, progress_bytes: int) -> None:
        self._retry = retry
        self._progress_bytes = progress_bytes
        self._attempts = 0
        self._offset = -1

    async def wait_or_give_up(self, error: TransferError, offset: int) -> None:
        if offset - self._offset >= self._progress_bytes:
            self._attempts = 0
        self._offset = max(self._offset, offset)
        self._attempts += 1
        if self._attempts >= self._retry.max_attempts:
            raise TransferError(f"{error}; gave up after {self._attempts} attempts") from None
        delay = self._retry.delay_s(self._attempts)
        log.debug("retry %d of %d in %.1f s after: %s", self._attempts, self._retry.max_attempts - 1,
                  delay, error)
        await trio.sleep(delay)
