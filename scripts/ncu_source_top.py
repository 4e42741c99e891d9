"""Top SASS instructions by warp-stall samples from `ncu -i REP --page source --csv --print-source sass`.

    ncu -i rep.ncu-rep --page source --csv --print-source sass | python scripts/ncu_source_top.py [N]
    zcat ncu_<name>_source.csv.gz | python scripts/ncu_source_top.py --smem
        shared-memory wavefronts by instruction kind (HGMMA operand reads included), against ncu's ideal count:
        where a kernel's shared-memory pipe goes and which stores or loads conflict (NOTES.md, twenty-fourth session)
"""
import collections
import csv
import sys


def _table(lines):
    rows = list(csv.reader(lines))
    header_at = next(i for i, r in enumerate(rows) if any("Source" in c for c in r))
    return rows[header_at], [r for r in rows[header_at + 1:] if len(r) == len(rows[header_at])]


def _num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


def shared_wavefronts(lines):
    """{instruction kind (opcode and its first two modifiers): [wavefronts, ideal wavefronts, warp instructions]}
    over the instructions with shared-memory wavefronts, largest first."""
    header, body = _table(lines)
    col = {c: i for i, c in enumerate(header)}
    kinds = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for r in body:
        wavefronts = _num(r[col["L1 Wavefronts Shared"]])
        if not wavefronts:
            continue
        words = [w for w in r[col["Source"]].split() if not w.startswith("@")]
        kind = kinds[".".join(words[0].split(".")[:3])]
        kind[0] += wavefronts
        kind[1] += _num(r[col["L1 Wavefronts Shared Ideal"]])
        kind[2] += _num(r[col["Instructions Executed"]])
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1][0]))


def print_shared_wavefronts(lines):
    kinds = shared_wavefronts(lines)
    total = sum(w for w, _, _ in kinds.values())
    print(f"shared-memory wavefronts: {total:.4g}")
    for kind, (w, ideal, inst) in kinds.items():
        print(f"{kind:28s} {100 * w / total:5.1f}%  {w:.4g} (ideal {ideal:.4g})  per instruction "
              f"{w / max(inst, 1):.2f} (ideal {ideal / max(inst, 1):.2f})")


def main(n):
    header, body = _table(sys.stdin)
    print("columns:", " | ".join(header))
    sample_col = next(i for i, c in enumerate(header) if "Warp Stall Sampling (All" in c)
    source_col = next(i for i, c in enumerate(header) if c.strip() == "Source")
    address_col = next((i for i, c in enumerate(header) if "Address" in c), None)

    total = sum(_num(r[sample_col]) for r in body)
    print(f"instructions: {len(body)}, stall samples: {total:.0f}")
    extra = [i for i, c in enumerate(header) if c.startswith(("stall_", "Warp Stall Sampling (Not"))]
    for r in sorted(body, key=lambda r: -_num(r[sample_col]))[:n]:
        share = 100 * _num(r[sample_col]) / max(total, 1)
        detail = " ".join(f"{header[i]}={r[i]}" for i in extra if _num(r[i]) > 0)
        addr = r[address_col] if address_col is not None else ""
        print(f"{share:5.1f}% {addr} {r[source_col].strip()[:70]} {detail}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--smem"]:
        print_shared_wavefronts(sys.stdin)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
