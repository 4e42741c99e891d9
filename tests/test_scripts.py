"""The device-call helpers in scripts/ stay in step with the kernel sources they patch: a stale patch
would only fail on the GPU, inside a device call."""
import importlib
import pathlib
import sys

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _script(name):
    sys.path.insert(0, str(SCRIPTS))  # the probes import their sibling variants.py
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


def test_fwd_probe_patches_apply_to_the_shipped_forward():
    probe = _script("fwd_probe")
    assert {"hot", "noload", "q0", "left3"} <= set(probe.PATCHES)
    for name, pairs in probe.PATCHES.items():
        for old, new in pairs:
            assert probe.SOURCE.count(old) >= 1, (name, old[:120])
            assert old != new, name


def test_bwd_probe_applies_the_stored_backward_patches():
    """scripts/patches/*.patch are stored backward variants and timing probes (NOTES.md has what each measured)."""
    probe = _script("bwd_probe")
    patches = sorted((SCRIPTS / "patches").glob("sm90_bwd_*.patch"))
    assert patches
    for patch in patches:
        patched = probe.patched_source(patch)
        assert patched != probe.SOURCE and "def sm90_backward(" in patched, patch
        compile(patched, str(patch), "exec")
