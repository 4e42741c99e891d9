"""Is a refactor codegen-neutral? Hash the sm_90a SASS of every kernel build, on the CPU (no GPU needed).

    python scripts/sass_fingerprint.py save before.json     # on the old tree
    python scripts/sass_fingerprint.py compare before.json  # on the new tree: lists the builds whose SASS changed

The builds: every case of `python -m flash256.inspect` (all shipped configurations, causal and not, windows, soft
caps, sinks, varlen, schedulers, the unfused dK/dV kernel) plus the forward with 1/8 and 7/8 of exp2 on the
polynomial. Identical hashes mean identical machine code, so no device call is needed to keep the change.
"""
import hashlib
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from flash256.inspect import collect_cases  # noqa: E402
from flash256.kernels import sm90_fwd  # noqa: E402
from flash256.kernels.compile_target import dump_sass  # noqa: E402


def builds():
    cases, errors = collect_cases(90)
    if errors:
        raise SystemExit(f"kernel modules failed to import: {errors}")
    yield from ((f"{case.kernel} {case.config}", case.compile) for case in cases)
    for cfg in sm90_fwd.CONFIGS.values():
        for causal in (False, True):
            for eighths in (1, 7):
                yield (f"sm90_fwd {cfg.describe()} causal={causal} exp2_poly={eighths}/8",
                       lambda cfg=cfg, causal=causal, eighths=eighths: sm90_fwd.compile_sm90(
                           cfg, causal, "single", poly_eighths=eighths))


def fingerprints() -> dict:
    return {label: hashlib.sha256(dump_sass(compile_fn()).encode()).hexdigest() for label, compile_fn in builds()}


def main(argv):
    if len(argv) != 2 or argv[0] not in ("save", "compare"):
        raise SystemExit(__doc__)
    action, path = argv
    now = fingerprints()
    if action == "save":
        pathlib.Path(path).write_text(json.dumps(now, indent=1))
        print(f"{len(now)} builds saved to {path}")
        return 0
    before = json.loads(pathlib.Path(path).read_text())
    changed = sorted(label for label in before.keys() & now.keys() if before[label] != now[label])
    for title, labels in (("changed", changed), ("only before", sorted(before.keys() - now.keys())),
                          ("only now", sorted(now.keys() - before.keys()))):
        for label in labels:
            print(f"{title}: {label}")
    same = len(before.keys() & now.keys()) - len(changed)
    print(f"{same} builds identical, {len(changed)} changed")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
