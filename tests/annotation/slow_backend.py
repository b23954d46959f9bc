"""A stage-1 backend for the resume tests: the simulated captioner, slowed down by
$GROVE_TEST_STAGE1_DELAY seconds a batch so that a test can kill a run between two batches, and
listing the clips of every call it gets in $GROVE_TEST_STAGE1_CALLS (one JSON list a line).

Both come from the environment, not from stage-1 options, so they do not change the stage version:
a slow run and a fast one of this backend write the same outputs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from annotation.records import ClipFailure, ClipFrames, ClipRequest
from annotation.stage1 import SimulatedCaptioner

NAME = "tests.annotation.slow_backend:SlowSimulatedCaptioner"


class SlowSimulatedCaptioner(SimulatedCaptioner):
    def caption_clips(self, clips: Sequence[ClipRequest]) -> list[ClipFrames | ClipFailure]:
        calls = os.environ.get("GROVE_TEST_STAGE1_CALLS")
        if calls:
            with open(calls, "a") as handle:
                handle.write(json.dumps([clip.key for clip in clips]) + "\n")
        time.sleep(float(os.environ.get("GROVE_TEST_STAGE1_DELAY", "0")))
        return super().caption_clips(clips)
