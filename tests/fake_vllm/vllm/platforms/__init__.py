"""``vllm.platforms.current_platform`` of the fake: CPU unless ``FAKE_VLLM_DEVICE=cuda``."""

from __future__ import annotations

import os


class _Platform:
    def is_cpu(self) -> bool:
        return os.environ.get("FAKE_VLLM_DEVICE", "cpu") == "cpu"

    def get_device_name(self, device_id: int = 0) -> str:
        return "cpu" if self.is_cpu() else "NVIDIA H100 80GB HBM3"


current_platform = _Platform()
