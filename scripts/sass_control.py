"""What each SASS instruction waits on: the control bits of a Volta-or-later listing, on the CPU (no GPU needed).

    python scripts/sass_control.py FILE [LO HI]   each instruction (offsets LO..HI, hex) with its fixed stall
                                                 cycles, the scoreboards it sets (W: its result, R: its operands
                                                 read) and the ones it waits on before it issues
    python scripts/sass_control.py --loads FILE   per loop that issues global loads: its wgmma issue and waits,
                                                 and every instruction that waits on a load's scoreboard
    python scripts/sass_control.py --in-issue FILE...  per loop, the instructions that wait on a scoreboard (other
                                                 than an mbarrier wait's) while a wgmma group is being issued,
                                                 with the opcodes that set it: each such wait delays the group

FILE: a cuobjdump listing with encodings, e.g. `python -m flash256.inspect --kernel sm90_bwd --sass-dir DIR`.
The decoding lives in flash256/kernels/compile_target.py (`python -m flash256.inspect` reports the count of
global-load waits inside a wgmma issue, LDG|MMA); this is the listing behind it. `--loads` is how the sixteenth
session found warpgroup 0 of the d=256 dK/dV kernel waiting for its lse loads before S^T's wgmmas.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from flash256.kernels.compile_target import (  # noqa: E402
    NO_SCOREBOARD, Instruction, loops, opcode, parse_instructions, waits_in_wgmma_issue)


def _scoreboard(index: int) -> str:
    return "-" if index == NO_SCOREBOARD else str(index)


def describe(ins: Instruction) -> str:
    waits = ",".join(map(str, sorted(ins.waits)))
    return (f"{ins.offset:05x} S{ins.stall:<2} W{_scoreboard(ins.write_sb)} R{_scoreboard(ins.read_sb)} "
            f"wait[{waits:11s}] {ins.text}")


def _global_load(ins: Instruction) -> bool:
    return opcode(ins.text) == "LDG"  # not UTMALDG (a TMA load, tracked by an mbarrier)


def load_waits(body: list[Instruction]) -> list[Instruction]:
    """The last wgmma of each of the loop's groups and the waits for them, its mbarrier waits, and the
    instructions that wait on a scoreboard its global loads set, in order."""
    load_sbs = {x.write_sb for x in body if _global_load(x)} - {NO_SCOREBOARD}
    return [x for x in body
            if ("HGMMA" in x.text and "gsb0" in x.text) or "DEPBAR" in x.text or "TRYWAIT" in x.text
            or (not _global_load(x) and x.waits & load_sbs)]


def main(argv) -> int:
    if argv[:1] == ["--in-issue"] and len(argv) > 1:
        for path in argv[1:]:
            for body in loops(parse_instructions(open(path).read())):
                for ins, kinds in waits_in_wgmma_issue(body):
                    print(f"{path}: loop {body[0].offset:#x}: {describe(ins)}  (set by {', '.join(sorted(kinds))})")
        return 0
    if argv[:1] == ["--loads"] and len(argv) == 2:
        for body in loops(parse_instructions(open(argv[1]).read())):
            if any(_global_load(x) for x in body):
                print(f"loop {body[0].offset:#x}-{body[-1].offset:#x}, {len(body)} instructions")
                for ins in load_waits(body):
                    print("  " + describe(ins))
        return 0
    if len(argv) not in (1, 3):
        raise SystemExit(__doc__)
    lo, hi = (int(a, 16) for a in argv[1:]) if len(argv) == 3 else (0, 1 << 40)
    for ins in parse_instructions(open(argv[0]).read()):
        if lo <= ins.offset <= hi:
            print(describe(ins))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
