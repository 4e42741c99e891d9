"""One row per kernel of an Nsight Compute details page (`ncu -i REP --page details --print-details all`, as
`scripts/ncu_stalls.sh` saves it): the numbers that compare kernels doing the same work, e.g. flash256's backward
against cuDNN's and flash-attn-4's at the power cap (NOTES.md, twenty-fourth session).

    python scripts/ncu_kernels.py ncu_<name>_details.txt [...]
"""
import re
import sys

# column: the metric's name as the details page prints it
METRICS = {
    "ms": "Duration",
    "GHz": "SM Frequency",
    "Mcycles": "Elapsed Cycles",
    "tensor %": "SM: Pipe Tensor Cycles Active",
    "smem pipe %": "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum.pct_of_peak_sustained_elapsed",
    "issue %": "Issue Slots Busy",
    "L2 hit %": "L2 Hit Rate",
    "regs": "Registers Per Thread",  # LaunchStats section
    "smem KB": "Dynamic Shared Memory Per Block",
}
HEADER = re.compile(r"^  (\S.*?) \((\d+), (\d+), (\d+)\)x\((\d+), \d+, \d+\), Context")
# column: {the unit the page prints: factor to the column's unit}
UNITS = {"ms": {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3},
         "Mcycles": {"cycle": 1e-6, "Kcycle": 1e-3, "Mcycle": 1.0},
         "smem KB": {"byte/block": 1e-3, "Kbyte/block": 1.0, "Mbyte/block": 1e3}}


def kernels(text):
    """[(kernel name, {column: value})] in the page's order."""
    rows = []
    for line in text.splitlines():
        header = HEADER.match(line)
        if header:
            grid = int(header.group(2)) * int(header.group(3)) * int(header.group(4))
            rows.append((header.group(1), {"grid": grid, "threads": int(header.group(5))}))
            continue
        if not rows:
            continue
        fields = line.split()
        for column, metric in METRICS.items():
            name = metric.split()
            if fields[:len(name)] == name and column not in rows[-1][1] and len(fields) > len(name):
                value = fields[-1].replace(",", "")
                try:
                    number = float(value)
                except ValueError:
                    continue
                if column in UNITS:
                    number *= UNITS[column].get(fields[-2], float("nan"))
                rows[-1][1][column] = number
    return rows


def table(rows):
    columns = ["grid", "threads", *METRICS]
    lines = ["| kernel | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, values in rows:
        cells = [f"{values[c]:g}" if c in values else "" for c in columns]
        lines.append(f"| {name[:60]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"# {path}\n" + table(kernels(open(path).read())))
