"""Top SASS instructions by warp-stall samples from `ncu -i REP --page source --csv --print-source sass`.

    ncu -i rep.ncu-rep --page source --csv --print-source sass | python scripts/ncu_source_top.py [N]
"""
import csv
import sys


def main(n):
    rows = list(csv.reader(sys.stdin))
    header_at = next(i for i, r in enumerate(rows) if any("Source" in c for c in r))
    header, body = rows[header_at], [r for r in rows[header_at + 1:] if len(r) == len(rows[header_at])]
    print("columns:", " | ".join(header))
    sample_col = next(i for i, c in enumerate(header) if "Warp Stall Sampling (All" in c)
    source_col = next(i for i, c in enumerate(header) if c.strip() == "Source")
    address_col = next((i for i, c in enumerate(header) if "Address" in c), None)

    def num(x):
        try:
            return float(x.replace(",", ""))
        except ValueError:
            return 0.0
    total = sum(num(r[sample_col]) for r in body)
    print(f"instructions: {len(body)}, stall samples: {total:.0f}")
    extra = [i for i, c in enumerate(header) if c.startswith(("stall_", "Warp Stall Sampling (Not"))]
    for r in sorted(body, key=lambda r: -num(r[sample_col]))[:n]:
        share = 100 * num(r[sample_col]) / max(total, 1)
        detail = " ".join(f"{header[i]}={r[i]}" for i in extra if num(r[i]) > 0)
        addr = r[address_col] if address_col is not None else ""
        print(f"{share:5.1f}% {addr} {r[source_col].strip()[:70]} {detail}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
