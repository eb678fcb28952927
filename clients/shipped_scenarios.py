"""The scenarios heddle ships (`heddle bench --scenario NAME`), as scenario TOML (clients/scenarios.py
parses it and documents the format).

The shipped scenarios follow RTGen and XRBench (concurrent real-time apps with frame deadlines and
occasional heavy requests) mapped onto the embedded default pipelines: `multihead` stands for
per-frame vision DNNs with several heads, `classify` for a detector/classifier, `text_classify` (a
transformer encoder) for speech, and the LLM apps generate with `chat` (token ids in, a decoder LLM
with a KV cache) over streams, as a chat or dialogue client would.

Apart from scenarios.py, which owns the format and its checks: these are data, long TOML text
that would bury the parser, and each is also an example of the format.
"""

from __future__ import annotations

__all__ = ["DEFAULT_SCENARIO", "SCENARIOS"]

DEFAULT_SCENARIO = "default"

# Rates are sized for a small CPU box running the embedded default; --rate-scale moves them.
SCENARIOS: dict[str, str] = {
    "default": """
name = "default"
description = "A mixed load on the embedded default pipelines: a camera stream, random image requests, bursts of text, a background closed loop and streamed chat replies."
[[apps]]
name = "camera stream 15 FPS"
pipeline = "multihead"
priority = 4
deadline_ms = 50
arrival = "periodic"
rate_hz = 15
jitter_ms = 3
[[apps]]
name = "image requests"
pipeline = "classify"
priority = 3
deadline_ms = 100
arrival = "poisson"
rate_hz = 20
[[apps]]
name = "text bursts"
pipeline = "text_classify"
priority = 2
deadline_ms = 250
arrival = "burst"
rate_hz = 1
burst_size = 5
[[apps]]
name = "background batch"
pipeline = "classify"
priority = 1
arrival = "closed"
concurrency = 1
think_ms = 50
[[apps]]
name = "chat replies"
pipeline = "chat"
priority = 2
deadline_ms = 1000
arrival = "poisson"
rate_hz = 1
stream = true
max_new_tokens = 32
""",  # noqa: E501 (a description is one TOML string)
    "video_conferencing": """
name = "video_conferencing"
description = "XRBench-style video call: background segmentation per frame, a speech encoder on audio chunks, and occasional LLM meeting summaries."
[[apps]]
name = "segmentation 30 FPS"
pipeline = "multihead"
priority = 4
deadline_ms = 33
arrival = "periodic"
rate_hz = 30
jitter_ms = 2
[[apps]]
name = "speech encoder 10 Hz"
pipeline = "text_classify"
priority = 3
deadline_ms = 100
arrival = "periodic"
rate_hz = 10
jitter_ms = 5
[[apps]]
name = "LLM summary"
pipeline = "chat"
priority = 1
deadline_ms = 2000
arrival = "poisson"
rate_hz = 0.5
stream = true
max_new_tokens = 64
""",  # noqa: E501 (a description is one TOML string)
    "ar_assistant": """
name = "ar_assistant"
description = "XRBench-style AR assistant: object detection at 30 FPS, hand tracking at 45 FPS, and LLM answers to questions."
[[apps]]
name = "object detection 30 FPS"
pipeline = "classify"
priority = 4
deadline_ms = 33
arrival = "periodic"
rate_hz = 30
jitter_ms = 2
[[apps]]
name = "hand tracking 45 FPS"
pipeline = "multihead"
priority = 4
deadline_ms = 22
arrival = "periodic"
rate_hz = 45
jitter_ms = 1
[[apps]]
name = "LLM answers"
pipeline = "chat"
priority = 2
deadline_ms = 1000
arrival = "poisson"
rate_hz = 1
stream = true
max_new_tokens = 32
""",  # noqa: E501 (a description is one TOML string)
    "gaming": """
name = "gaming"
description = "RTGen-style game: a per-frame DNN at 60 FPS and NPC dialogue that arrives in bursts when the player talks."
[[apps]]
name = "frame DNN 60 FPS"
pipeline = "classify"
priority = 4
deadline_ms = 16.7
arrival = "periodic"
rate_hz = 60
jitter_ms = 1
[[apps]]
name = "NPC dialogue LLM"
pipeline = "chat"
priority = 2
deadline_ms = 500
arrival = "burst"
rate_hz = 0.5
burst_size = 4
stream = true
max_new_tokens = 24
""",  # noqa: E501 (a description is one TOML string)
    "camera_analytics": """
name = "camera_analytics"
description = "RTGen-style analytics box: a detector per frame over 8 cameras at 10 FPS, a classifier on detections, and a closed-loop re-indexing job."
[[apps]]
name = "detector 8 cameras x 10 FPS"
pipeline = "multihead"
priority = 3
deadline_ms = 100
arrival = "periodic"
rate_hz = 10
streams = 8
jitter_ms = 5
[[apps]]
name = "classifier on detections"
pipeline = "classify"
priority = 2
deadline_ms = 200
arrival = "poisson"
rate_hz = 20
[[apps]]
name = "re-indexing job"
pipeline = "classify"
priority = 1
arrival = "closed"
concurrency = 2
""",  # noqa: E501 (a description is one TOML string)
}
