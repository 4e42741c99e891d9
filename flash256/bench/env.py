"""The environment a run was measured in: GPU, clocks, software versions."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

import torch

NVSMI_FIELDS = ("name", "driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
                "power.limit", "temperature.gpu", "persistence_mode", "memory.total")


def _nvidia_smi(index: int) -> dict:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(NVSMI_FIELDS)}",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=15, check=True).stdout
    except Exception as e:  # noqa: BLE001
        return {"error": f"nvidia-smi: {type(e).__name__}"}
    values = [x.strip() for x in out.strip().splitlines()[0].split(",")] if out.strip() else []
    return dict(zip(NVSMI_FIELDS, values))


def _pynvml(index: int) -> dict:
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        return {"clocks.sm": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "clocks.max.sm": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                "clocks.mem": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)}
    except Exception as e:  # noqa: BLE001
        return {"error": f"pynvml: {type(e).__name__}"}


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return None


def _versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        v["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        v["cudnn"] = None
    for mod in ("triton", "flash256", "flash_attn"):
        try:
            v[mod] = getattr(__import__(mod), "__version__", "installed")
        except Exception:  # noqa: BLE001
            v[mod] = None
    v["flash256_git"] = _git_commit()
    return v


def collect_env(cfg=None) -> dict:
    device = cfg.device if cfg is not None else "cuda"
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command if cfg is not None else " ".join(sys.argv),
        "host": platform.node(),
        "versions": _versions(),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        index = torch.device(device).index or 0
        p = torch.cuda.get_device_properties(index)
        gpu = {"name": p.name, "sm_count": p.multi_processor_count,
               "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
               "l2_mib": round(getattr(p, "L2_cache_size", 0) / 2**20, 1)}
        smi = _nvidia_smi(index)
        if "error" in smi:
            smi.update(_pynvml(index))
        gpu["nvidia_smi"] = smi
        env["gpu"] = gpu
    else:
        env["gpu"] = {"name": f"none ({device})", "sm_count": None}
    return env


def sample_clocks_after(env: dict, device: str) -> None:
    """Clocks right after the sweep (the ones at the start are usually idle clocks)."""
    if "nvidia_smi" in env.get("gpu", {}):
        index = torch.device(device).index or 0
        env["gpu"]["nvidia_smi_after_run"] = _nvidia_smi(index)


def gpu_line(env: dict) -> str:
    gpu = env.get("gpu", {})
    smi = gpu.get("nvidia_smi", {})
    parts = [str(gpu.get("name"))]
    if gpu.get("sm_count"):
        parts.append(f"{gpu['sm_count']} SMs")
    after = gpu.get("nvidia_smi_after_run", {})
    if smi.get("clocks.max.sm"):
        parts.append(f"max SM clock {smi['clocks.max.sm']}")
    if after.get("clocks.sm"):
        parts.append(f"SM clock {after['clocks.sm']} right after the run ({after.get('temperature.gpu', '?')} C)")
    if smi.get("clocks.mem"):
        parts.append(f"memory clock {smi['clocks.mem']}")
    if smi.get("power.limit"):
        parts.append(f"power limit {smi['power.limit']}")
    if smi.get("driver_version"):
        parts.append(f"driver {smi['driver_version']}")
    return ", ".join(parts)


def software_line(env: dict) -> str:
    v = env.get("versions", {})
    items = [f"torch {v.get('torch')} (CUDA {v.get('cuda')})", f"cuDNN {v.get('cudnn')}",
             f"triton {v.get('triton')}"]
    f256 = v.get("flash256")
    items.append(f"flash256 {f256 or 'not importable'}" + (f" @ {v['flash256_git']}" if v.get("flash256_git") else ""))
    if v.get("flash_attn"):
        items.append(f"flash_attn {v['flash_attn']}")
    items.append(f"Python {v.get('python')}")
    return ", ".join(items)
