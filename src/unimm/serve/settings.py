"""Server limits and batching knobs, in one frozen dataclass (every limit a client can hit)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..pipeline import MAX_BATCH


@dataclass(frozen=True)
class ServeSettings:
    max_body_bytes: int = 8 * 2**20      # whole request body (JSON or multipart)
    max_image_pixels: int = 2048 * 2048  # decoded width x height of one input image
    max_images: int = 8                  # image parts in one conversation
    max_messages: int = 64               # messages in one chat request
    max_n: int = 8                       # images per generation / edit request
    max_tokens: int = 64                 # answer length cap (and default)
    queue_size: int = 64                 # waiting rows per lane (answer / draw); past it: 503
    max_batch: int = 16                  # rows in one shared forward pass (<= Pipeline.MAX_BATCH)
    wait_ms: float = 5.0                 # how long a batch waits for company after its first row
    request_timeout_s: float = 60.0      # a request not answered by then gets 504
    retry_after_s: int = 1               # the Retry-After hint sent with 503

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"server setting {f.name} must be a non-negative number, got {v!r}")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must lie in [1, {MAX_BATCH}], got {self.max_batch}")
        if self.queue_size < 1 or self.max_n < 1 or self.max_tokens < 1:
            raise ValueError("queue_size, max_n and max_tokens must be at least 1")
