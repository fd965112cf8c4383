"""What this machine has: free memory on a device (CUDA) or available memory (Linux CPU).

Asked before work that could exhaust it (a candidate enumeration, a benchmark, a training run), so that a
too-large request is one line, not an out-of-memory crash minutes later.
"""

from __future__ import annotations

from pathlib import Path


def available_bytes(device) -> int | None:
    """Free device memory (CUDA) or MemAvailable (Linux CPU); None when unknown."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
