"""What the machine can do, measured: the denominators of every utilisation a bench reports.

- Matmul peak: the best GFLOP/s of square (n, n) @ (n, n) products over a few sizes, 2 n^3
  FLOPs each (fp32 and bf16).
- Copy bandwidth: GB/s of a large tensor copy, counting bytes read + bytes written (the STREAM
  "copy" convention); read bandwidth: one streaming read (a sum).
- GEMM floors: the fastest time of given (M, K, N) products on the kernels this torch offers.
- Decode-step floor (pure arithmetic): the bytes a code-by-code decoding step must read (every
  weight once, shared by the rows, plus each row's filled KV cache) over the copy bandwidth.

Sizes are chosen per device (`machine_constants`): large enough to leave the caches on a CPU,
larger on a GPU; `quick` takes small ones for smoke runs.
"""

from __future__ import annotations

import time

import torch

from .timing import sync, timed


def matmul_peak(dev: torch.device, dtype: torch.dtype, sizes: tuple[int, ...],
                repeats: int) -> dict:
    """Best GFLOP/s of (n, n) @ (n, n) over sizes; 2 n^3 FLOPs each (median of repeats)."""
    per = {}
    for n in sizes:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        t = timed(lambda: a @ b, dev, repeats, warmup=2)
        per[str(n)] = 2 * n ** 3 / t["median_s"] / 1e9
    return {"gflops_by_size": per, "peak_gflops": max(per.values())}


def copy_bandwidth(dev: torch.device, mbytes: int, repeats: int) -> dict:
    """GB/s of dst.copy_(src) for an fp32 tensor of `mbytes` MiB, counting read + write."""
    n = mbytes * 2 ** 20 // 4
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), dev, repeats, warmup=2)
    return {"mbytes": mbytes, "gb_per_s": 2 * n * 4 / t["median_s"] / 1e9,
            "best_gb_per_s": 2 * n * 4 / t["min_s"] / 1e9}


def read_bandwidth(dev: torch.device, mbytes: int, repeats: int) -> dict:
    """GB/s of one streaming read: the sum of an fp32 tensor of `mbytes` MiB (take a size well
    above the last-level cache to measure main memory)."""
    x = torch.rand(mbytes * 2 ** 20 // 4, device=dev)
    t = timed(lambda: x.sum(), dev, repeats, warmup=2)
    return {"mbytes": mbytes, "gb_per_s": x.numel() * 4 / t["median_s"] / 1e9,
            "best_gb_per_s": x.numel() * 4 / t["min_s"] / 1e9}


def gemm_seconds(shapes, dev: torch.device, calls: int = 25) -> dict[tuple, float]:
    """For each fp32 product (M, K, N), i.e. x (M, K) times a weight (N, K) transposed, the
    fastest of `calls` timed calls (hot cache) over the kernels this torch offers: F.linear
    (MKL / cuBLAS) and on a CPU also oneDNN on a weight packed once (what `fast.linear` runs
    for prompt fills). A floor for those products on this machine, not their cost in place,
    where weights and caches come from further away."""
    import torch.nn.functional as F
    out = {}
    for m, k, n in shapes:
        x, w = torch.randn(m, k, device=dev), torch.randn(n, k, device=dev)
        kernels = [lambda: F.linear(x, w)]
        if dev.type == "cpu" and torch.backends.mkldnn.is_available():
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
                kernels.append(lambda p=packed: torch.ops.mkldnn._linear_pointwise(
                    x, p, None, "none", [], ""))
            except (RuntimeError, AttributeError):   # a build without oneDNN's packed linear
                pass
        best = float("inf")
        for fn in kernels:
            for _ in range(3):
                fn()
            sync(dev)
            for _ in range(calls):
                t = time.perf_counter()
                fn()
                sync(dev)
                best = min(best, time.perf_counter() - t)
        out[(m, k, n)] = best
    return out


def machine_constants(dev: torch.device, quick: bool, repeats: int) -> dict:
    if dev.type == "cuda":
        sizes = (256, 512, 1024) if quick else (1024, 2048, 4096, 8192)
        mb = 64 if quick else 1024
    else:
        sizes, mb = ((64, 128, 256) if quick else (256, 512, 1024, 2048)), (16 if quick else 512)
    return {"matmul_fp32": matmul_peak(dev, torch.float32, sizes, repeats),
            "matmul_bf16": matmul_peak(dev, torch.bfloat16, sizes, repeats),
            "copy": copy_bandwidth(dev, mb, repeats),
            "tf32_matmul": bool(dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)}


# ---- decode-step floor (pure arithmetic, unit-tested) ------------------------------------------

def kv_bytes_per_position(n_layers: int, n_kv_heads: int, head_dim: int, elem: int) -> int:
    """Bytes of keys + values of one row at one position, all layers."""
    return 2 * n_layers * n_kv_heads * head_dim * elem


def decode_step_bytes(weight_bytes: float, kv_per_position: float, rows: int,
                      context: float) -> float:
    """Bytes one decode step must read: every weight once (shared by all rows) + each row's
    filled KV cache (`context` positions)."""
    return weight_bytes + kv_per_position * rows * context


def bandwidth_use(step_bytes: float, step_s: float, bandwidth: float) -> dict:
    """Floor = bytes / bandwidth (bytes/s); utilisation = bytes / step_s / bandwidth."""
    floor = step_bytes / bandwidth
    return {"bytes_per_step": step_bytes, "floor_s": floor, "step_s": step_s,
            "step_over_floor": step_s / floor, "bandwidth_utilisation": floor / step_s}
