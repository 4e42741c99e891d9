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
Each instruction is two 64-bit words; the second word's bits 41-63 are the control bits (4 stall cycles, yield,
3 write and 3 read scoreboard indices with 7 for none, a 6-bit wait mask, 4 reuse bits). A variable-latency
instruction (a load, MUFU) sets a scoreboard; a later one that needs its result waits on it. `--loads` is how the
sixteenth session found warpgroup 0 of the d=256 dK/dV kernel waiting for its lse loads before S^T's wgmmas.
"""
import re
import sys
from typing import NamedTuple

_INSTRUCTION = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\* (0x[0-9a-f]{16}) \*/")
_ENCODING = re.compile(r"/\* (0x[0-9a-f]{16}) \*/")
_BRANCH = re.compile(r"BRA (?:!?U?P\d, )?0x([0-9a-f]+)")
_GLOBAL_LOAD = re.compile(r"\bLDG\b")  # not UTMALDG (a TMA load, tracked by an mbarrier)
NONE = 7  # scoreboard index that means "sets none"


class Instruction(NamedTuple):
    offset: int
    text: str
    stall: int
    write_sb: int
    read_sb: int
    waits: frozenset


def control_bits(high_word: int) -> tuple[int, int, int, frozenset]:
    """(stall cycles, write scoreboard, read scoreboard, scoreboards waited on) of an instruction's second word."""
    ctrl = high_word >> 41
    wait_mask = (ctrl >> 11) & 0x3F
    return ctrl & 0xF, (ctrl >> 5) & 7, (ctrl >> 8) & 7, frozenset(b for b in range(6) if wait_mask >> b & 1)


def parse(listing: str) -> list[Instruction]:
    lines = listing.splitlines()
    out = []
    for line, following in zip(lines, lines[1:]):
        m = _INSTRUCTION.match(line)
        second = _ENCODING.search(following) if m else None
        if second:
            out.append(Instruction(int(m.group(1), 16), m.group(2), *control_bits(int(second.group(1), 16))))
    return out


def _scoreboard(index: int) -> str:
    return "-" if index == NONE else str(index)


def describe(ins: Instruction) -> str:
    waits = ",".join(map(str, sorted(ins.waits)))
    return (f"{ins.offset:05x} S{ins.stall:<2} W{_scoreboard(ins.write_sb)} R{_scoreboard(ins.read_sb)} "
            f"wait[{waits:11s}] {ins.text}")


def loops(instructions: list[Instruction], min_length: int = 16) -> list[list[Instruction]]:
    """The bodies of conditional backward branches (a loop's back edge), in code order. Unconditional ones are the
    way back from out-of-line code (an mbarrier wait's retry), and the shortest are spin loops: both left out."""
    bodies = []
    for ins in instructions:
        m = _BRANCH.search(ins.text)
        if m and ins.text.startswith("@") and int(m.group(1), 16) < ins.offset:
            body = [x for x in instructions if int(m.group(1), 16) <= x.offset <= ins.offset]
            if len(body) >= min_length:
                bodies.append(body)
    return bodies


def load_waits(body: list[Instruction]) -> list[Instruction]:
    """The last wgmma of each of the loop's groups and the waits for them, its mbarrier waits, and the
    instructions that wait on a scoreboard its global loads set, in order."""
    load_sbs = {x.write_sb for x in body if _GLOBAL_LOAD.search(x.text)} - {NONE}
    return [x for x in body
            if ("HGMMA" in x.text and "gsb0" in x.text) or "DEPBAR" in x.text or "TRYWAIT" in x.text
            or (not _GLOBAL_LOAD.search(x.text) and x.waits & load_sbs)]


def _opcode(text: str) -> str:
    return text.split()[1 if text.startswith("@") else 0].split(".")[0]


def waits_in_issue(body: list[Instruction]) -> list[tuple[Instruction, set]]:
    """(instruction, opcodes that set what it waits on) for each instruction between a WARPGROUP.ARRIVE and the
    last wgmma of its group that waits on a scoreboard set in the loop by anything but an mbarrier wait (SYNCS)."""
    setters = {}
    for x in body:
        if x.write_sb != NONE:
            setters.setdefault(x.write_sb, set()).add(_opcode(x.text))
    found, issuing = [], False
    for x in body:
        issuing = issuing or "WARPGROUP.ARRIVE" in x.text
        kinds = set().union(*(setters.get(b, set()) for b in x.waits))
        if issuing and "HGMMA" not in x.text and kinds - {"SYNCS"}:
            found.append((x, kinds))
        if "HGMMA" in x.text and "gsb0" in x.text:
            issuing = False
    return found


def main(argv) -> int:
    if argv[:1] == ["--in-issue"] and len(argv) > 1:
        for path in argv[1:]:
            for body in loops(parse(open(path).read())):
                for ins, kinds in waits_in_issue(body):
                    print(f"{path}: loop {body[0].offset:#x}: {describe(ins)}  (set by {', '.join(sorted(kinds))})")
        return 0
    if argv[:1] == ["--loads"] and len(argv) == 2:
        for body in loops(parse(open(argv[1]).read())):
            if any(_GLOBAL_LOAD.search(x.text) for x in body):
                print(f"loop {body[0].offset:#x}-{body[-1].offset:#x}, {len(body)} instructions")
                for ins in load_waits(body):
                    print("  " + describe(ins))
        return 0
    if len(argv) not in (1, 3):
        raise SystemExit(__doc__)
    lo, hi = (int(a, 16) for a in argv[1:]) if len(argv) == 3 else (0, 1 << 40)
    for ins in parse(open(argv[0]).read()):
        if lo <= ins.offset <= hi:
            print(describe(ins))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
