"""The allocator tuning the daemon applies at start."""

from __future__ import annotations

import platform

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mxproxy.memory import tune_malloc


class TuneMallocTests(SynchronousTestCase):
    def test_glibc_accepts_both_thresholds(self) -> None:
        if platform.libc_ver()[0] != "glibc":
            raise SkipTest("not glibc: tune_malloc leaves the allocator alone")
        self.assertTrue(tune_malloc())
