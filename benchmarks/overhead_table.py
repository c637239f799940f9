"""The README's overhead table, from bench_overhead.py reports.

    python benchmarks/overhead_table.py benchmarks/results/overhead.json

Prints one Markdown row per (model, XLA setting, configuration): the step
ratio with its interval, the start-up ratios and the event bytes per row; and,
when the report has them, the peak host memory rows.
"""

import json
import sys


def table(report):
    lines = [
        "| model | XLA | configuration | step ratio [95% CI] | start-up (first execution / first block) | bytes per row |",
        "|---|---|---|---|---|---|",
    ]
    for row in report.get("rows", []):
        if row["configuration"] == "plain fit":
            continue
        low, high = row["ratio_95ci"]
        lines.append(
            f"| {row['model']} | {'yes' if row['jit_compile'] else 'no'} | {row['configuration']} | "
            f"{row['ratio']:.2f} [{low:.2f}, {high:.2f}] | {row['startup_ratio']:.2f} / {row['startup_block_ratio']:.2f} | "
            f"{row['event_bytes_per_logged_row']:,.0f} |"
        )
    if report.get("memory_rows"):
        lines += ["", "| model | configuration | peak host memory | vs plain fit | process time |",
                  "|---|---|---|---|---|"]
        for row in report["memory_rows"]:
            seconds = f"{row['seconds']:,.0f} s" if "seconds" in row else "not recorded"
            lines.append(f"| {row['model']} | {row['configuration']} | {row['peak_host_bytes'] / 2**20:,.0f} MiB | "
                         f"{row['memory_ratio']:.2f} | {seconds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(table(json.load(open(path))))
        print()
