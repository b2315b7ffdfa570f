"""benchmarks/scaling.png: seconds per million rows and peak memory against rows (and, when it was
measured, the growing partition's step seconds by batch)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def plot_scaling(results: dict, path: Path) -> bool:
    """Write the PNG; False (and nothing written) when the scaling part was not measured."""
    sc = results.get("scaling")
    if not sc or not sc.get("points"):
        return False
    points = sc["points"]
    grow = results.get("growing")
    panels = 3 if grow else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=100)
    millions = [p["rows"] / 1e6 for p in points]
    labels = [f"{m:.1f} M" if m >= 1 else f"{m * 1000:.0f} k" for m in millions]

    ax = axes[0]
    ax.plot(millions, [p["end_to_end_s_per_m"] for p in points], "o-", label="datalog ingest, end to end")
    ax.plot(millions, [p["step_s_per_m"] for p in points], "s-", label="datalog_parquet step")
    base = points[0]["end_to_end_s_per_m"]
    ax.fill_between(
        millions, base, base * 1.15, color="tab:blue", alpha=0.1, label="end to end: up to +15 % over the first size"
    )
    ax.set_xlabel("rows (millions)")
    ax.set_ylabel("seconds per million rows")
    ax.set_ylim(bottom=0)
    ax.set_xticks(millions, labels)
    ax.set_title("Cost per row")
    ax.legend(fontsize=8)

    ax = axes[1]
    limit = sc["ram_limit_mb"]
    ax.bar(range(len(points)), [p["peak_rss_mb"] for p in points], color="tab:orange")
    ax.set_xticks(range(len(points)), labels)
    ax.axhline(limit, color="grey", linestyle="--", label=f"DATALOG_RAM_LIMIT ({limit:,} MB)")
    ax.axhline(limit + 400, color="tab:red", linestyle=":", label=f"target: limit + 400 MB ({limit + 400:,} MB)")
    ax.set_xlabel("rows")
    ax.set_ylabel("peak RSS of datalog ingest (MB)")
    ax.set_ylim(0, max(limit + 600, *(p["peak_rss_mb"] * 1.1 for p in points)))
    ax.set_title("Peak memory")
    ax.legend(fontsize=8, loc="upper left")

    if grow:
        ax = axes[2]
        steps = [b.get("step_seconds") or 0 for b in grow["batches"]]
        ax.plot(range(1, len(steps) + 1), steps, "o-", color="tab:green")
        ax.axhline(steps[0] * 1.5, color="tab:red", linestyle=":", label="target: 1.5 x the first batch")
        ax.set_xlabel("batch (hour)")
        ax.set_xticks(range(1, len(steps) + 1, max(1, len(steps) // 8)))
        ax.set_ylabel("step seconds")
        ax.set_ylim(bottom=0)
        ax.set_title("Growing partition")
        ax.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
