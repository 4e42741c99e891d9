"""The device-call helpers in scripts/ stay in step with the kernel sources they patch: a stale patch
would only fail on the GPU, inside a device call."""
import importlib
import pathlib
import sys

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def test_fwd_probe_patches_apply_to_the_shipped_forward():
    sys.path.insert(0, str(SCRIPTS))
    try:
        probe = importlib.import_module("fwd_probe")
    finally:
        sys.path.remove(str(SCRIPTS))
    assert {"hot", "noload", "q0", "left3"} <= set(probe.PATCHES)
    for name, pairs in probe.PATCHES.items():
        for old, new in pairs:
            assert probe.SOURCE.count(old) >= 1, (name, old[:120])
            assert old != new, name
