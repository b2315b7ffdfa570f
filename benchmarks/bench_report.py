"""results.json -> the figures section of benchmarks/REPORT.md (between the figures markers).

Every table is rendered from the figures of one run; a part that was not measured is left out.
The "before" figures are the constant `BEFORE`: issue 11's table and the report of 2026-12-01.
"""

from __future__ import annotations

from collections.abc import Callable

BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"

# Figures measured before the work of issue 11, as they were published.
BEFORE = {
    "issue": {
        "label": "issue 11 (one run)",
        "bare_rows_per_s": 1_010_000,
        "end_to_end_seconds": 17.67,
        "end_to_end_rows_per_s": 136_000,
        "end_to_end_vs_naive": 0.13,
        "small_seconds": 8.18,
        "small_vs_naive": 0.21,
        "pyarrow_seconds": 8.40,
        "pyarrow_rows_per_s": 286_000,
        "spark_seconds": 34.85,
        "spark_rows_per_s": 69_000,
        "big_file": "512MB: `IO Error: Failed to create directory`; by hand: `Out of Memory Error`; "
        "2GB: success, peak 2,370 MB",
    },
    "report": {
        "label": "REPORT.md of 2026-12-01",
        "bare_rows_per_s": 1_059_942,
        "step_vs_naive": 0.33,
        "step_vs_safe": 0.68,
        "end_to_end_seconds": 11.6,
        "end_to_end_vs_naive": 0.20,
        "small_seconds": 14.1,
        "small_vs_naive": 0.14,
        "peak_mb": 939,
    },
}

# The targets of issue 11.
STEP_VS_NAIVE = 0.8
END_TO_END_VS_NAIVE = 0.5
SMALL_VS_NAIVE = 0.5
VS_SPARK = 10.0
VS_PYARROW = 2.0
LINEAR_SPREAD = 0.15
RSS_OVER_LIMIT_MB = 400
BIG_FILE_PEAK_MB = 912
GROWING_RATIO = 1.5


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _x(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f} x"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**missed**")


def _rows_per_s(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f} rows/s"


def _mb(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f} MB"


def _s(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} s"


def spread(values: list[float]) -> float | None:
    """(largest - smallest) / smallest: how far apart seconds per million rows are."""
    values = [v for v in values if v]
    return max(values) / min(values) - 1 if len(values) > 1 else None


def figures(results: dict) -> dict:
    """The rates and ratios that the tables and targets share (None where not measured)."""
    f: dict = {}
    std = results.get("standard")
    if std:
        ingest = std["ingest"]
        f["naive"] = std["bare_naive"]["rows"] / std["bare_naive"]["seconds"]
        f["safe"] = std["bare_schema_safe"]["rows"] / std["bare_schema_safe"]["seconds"]
        f["step"] = _div(ingest.get("rows"), ingest.get("step_seconds"))
        f["end_to_end"] = _div(ingest.get("rows"), ingest["wall_seconds"])
        f["end_to_end_seconds"] = ingest["wall_seconds"]
        f["peak_mb"] = ingest["peak_rss_mb"]
    peers = results.get("peers") or {}
    for name in ("pyarrow", "spark"):
        if name in peers and "error" not in peers[name]:
            f[name] = _div(peers[name]["rows"], peers[name]["wall_seconds"])
            f[f"{name}_seconds"] = peers[name]["wall_seconds"]
    small = results.get("small_files")
    if small:
        f["small_naive"] = small["bare_naive"]["files"] / small["bare_naive"]["seconds"]
        f["small"] = _div(small["ingest"].get("keys"), small["ingest"]["wall_seconds"])
        f["small_seconds"] = small["ingest"]["wall_seconds"]
    return f


def header(results: dict) -> list[str]:
    m = results["machine"]
    earlier = {p: d for p, d in results.get("measured", {}).items() if p not in results["sets"]}
    lines = [
        f"Measured {results['date']} with `{results['command']}` (parts: {', '.join(results['sets'])}); "
        f"the whole run took {results['total_seconds'] / 60:.1f} min."
        + "".join(
            f" From an earlier run ({d} UTC): {', '.join(p for p, e in earlier.items() if e == d)}."
            for d in sorted(set(earlier.values()))
        ),
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}, "
        f"DuckDB {m['duckdb']}, pyarrow {m.get('pyarrow', '?')}, pyspark {m.get('pyspark', '?')}.",
    ]
    std = results.get("standard")
    if std:
        g, ingest = std["generated"], std["ingest"]
        lines.append(
            f"Standard set: {g['files']:,} files, {g['rows']:,} rows (+{g['bad_lines']} bad lines), "
            f"{g['bytes'] / 1e6:,.0f} MB, generated in {g['seconds']:.1f} s; `datalog ingest`: "
            f"{ingest.get('runs', '?')} runs, {ingest.get('rows', 0):,} rows, "
            f"{ingest.get('quarantined_lines', '?')} lines quarantined."
        )
    return lines


def peers_table(results: dict, f: dict) -> list[str]:
    std, peers, small = results.get("standard"), results.get("peers") or {}, results.get("small_files")
    if not std and not small:
        return []
    out = [
        "### Peers",
        "",
        "Same files for every contender, page cache warm. Ratios are rows/s (files/s for the small "
        "files) against the naive bare DuckDB COPY of the same set. Peak RSS is the child process's "
        "own (`ru_maxrss` of that child alone); the bare COPY runs inside the benchmark process.",
        "",
        "| contender | seconds | rate | vs bare DuckDB | peak RSS |",
        "|---|---|---|---|---|",
    ]
    naive = f.get("naive")

    def row(label: str, seconds: float | None, rate: float | None, peak: float | None = None) -> None:
        out.append(f"| {label} | {_s(seconds)} | {_rows_per_s(rate)} | {_x(_div(rate, naive))} | {_mb(peak)} |")

    if std:
        ingest = std["ingest"]
        row("bare DuckDB COPY, types from the first 32 files", std["bare_naive"]["seconds"], naive)
        row("bare DuckDB COPY, types from every line (schema-safe)", std["bare_schema_safe"]["seconds"], f["safe"])
        row("`datalog_parquet` step (its `seconds`, summed over runs)", ingest.get("step_seconds"), f["step"])
        row("`datalog ingest`, end to end (fresh process)", ingest["wall_seconds"], f["end_to_end"], f["peak_mb"])
    for name, label in (("pyarrow", "pyarrow, file by file"), ("spark", "Spark local[2]")):
        if "error" in peers.get(name, {}):
            out.append(f"| {label}: failed: `{peers[name]['error']}` | {_s(peers[name]['wall_seconds'])} | | | |")
    if "pyarrow" in f:
        p = peers["pyarrow"]
        row("pyarrow, file by file (whole child process)", p["wall_seconds"], f["pyarrow"], p["peak_rss_mb"])
    if "spark" in f:
        p = peers["spark"]
        peak = p["peak_rss_mb"] + (p.get("jvm_peak_rss_mb") or 0)
        row("Spark local[2], whole job with JVM start-up (peak: driver + JVM)", p["wall_seconds"], f["spark"], peak)
        row(
            "Spark local[2], without JVM start-up and session",
            p["job_seconds"],
            _div(p["rows"], p["job_seconds"]),
        )
    if small:
        g = small["generated"]
        n = f"{g['files']:,} files x {round((g['rows'] + g['bad_lines']) / g['files'])} rows"
        ingest, naive_files = small["ingest"], f["small_naive"]
        out.append(f"| {n}: bare DuckDB | {_s(small['bare_naive']['seconds'])} | {naive_files:,.0f} files/s | | |")
        out.append(
            f"| {n}: `datalog ingest` end to end ({ingest.get('runs', '?')} runs) | {_s(ingest['wall_seconds'])} | "
            f"{f['small'] or 0:,.0f} files/s | {_x(_div(f['small'], naive_files))} | {_mb(ingest['peak_rss_mb'])} |"
        )
    return out


def targets(results: dict, f: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) of every target of issue 11."""
    out: list[tuple[str, str, bool | None]] = []

    def ratio(label: str, value: float | None, base: float | None, target: float) -> None:
        r = _div(value, base)
        out.append((f"{label} >= {target} x", _x(r), None if r is None else r >= target))

    ratio("`datalog_parquet` step, rows/s against the naive bare COPY", f.get("step"), f.get("naive"), STEP_VS_NAIVE)
    ratio("`datalog ingest` end to end, standard set", f.get("end_to_end"), f.get("naive"), END_TO_END_VS_NAIVE)
    ratio(
        "`datalog ingest` end to end, files/s of the small files", f.get("small"), f.get("small_naive"), SMALL_VS_NAIVE
    )
    ratio("end to end against Spark local[2] (whole job)", f.get("end_to_end"), f.get("spark"), VS_SPARK)
    ratio("end to end against pyarrow file by file", f.get("end_to_end"), f.get("pyarrow"), VS_PYARROW)
    points = (results.get("scaling") or {}).get("points", [])
    for label, key in (("end to end", "end_to_end_s_per_m"), ("step", "step_s_per_m")):
        s = spread([p[key] for p in points if p.get(key)])
        sizes = ", ".join(f"{p['rows'] / 1e6:.1f}" for p in points)
        out.append(
            (
                f"linear cost, {label}: seconds per million rows at {sizes} M rows within {LINEAR_SPREAD:.0%}",
                "" if s is None else f"{s:.0%} apart",
                None if s is None else s <= LINEAR_SPREAD,
            )
        )
    if points:
        limit = results["scaling"]["ram_limit_mb"]
        worst = max(points, key=lambda p: p["peak_rss_mb"])
        out.append(
            (
                f"peak RSS <= limit + {RSS_OVER_LIMIT_MB} MB = {limit + RSS_OVER_LIMIT_MB:,} MB at every size",
                f"{worst['peak_rss_mb']:,.0f} MB at {worst['rows'] / 1e6:.1f} M rows (largest)",
                all(p["peak_rss_mb"] <= limit + RSS_OVER_LIMIT_MB for p in points),
            )
        )
    else:
        out.append((f"peak RSS <= limit + {RSS_OVER_LIMIT_MB} MB at every size", "", None))
    big = results.get("bigfile")
    if big:
        ok = big["success"] and big["peak_rss_mb"] <= BIG_FILE_PEAK_MB
        out.append(
            (
                f"big file, {big['ram_limit']}: every row, peak <= {BIG_FILE_PEAK_MB} MB",
                f"{'success' if big['success'] else 'failed'}, {big['rows_ingested']:,} of {big['rows']:,} rows, "
                f"{big['peak_rss_mb']:,.0f} MB",
                ok,
            )
        )
    else:
        out.append(("big file: every row, peak <= 912 MB", "", None))
    grow = results.get("growing")
    label = f"growing partition: last batch's step <= {GROWING_RATIO} x the first's"
    failed = [n for n, b in enumerate(grow["batches"], start=1) if b.get("error")] if grow else []
    if failed:
        out.append((label, f"batch {', '.join(map(str, failed))} of {len(grow['batches'])} failed", False))
    else:
        r = grow.get("ratio") if grow else None
        out.append((label, _x(r), None if r is None else r <= GROWING_RATIO))
    return out


def targets_table(results: dict, f: dict) -> list[str]:
    rows = targets(results, f)
    met = sum(1 for *_, ok in rows if ok)
    return [
        "### Targets",
        "",
        f"{met} of {len(rows)} met.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *(f"| {label} | {value} | {_verdict(ok)} |" for label, value, ok in rows),
    ]


def profile(results: dict) -> list[str]:
    sets = (("standard set", "standard"), ("small files", "small_files"))
    runs = {name: (results.get(key) or {}).get("ingest") or {} for name, key in sets}
    runs = {name: ingest for name, ingest in runs.items() if ingest.get("seconds") is not None}
    if not runs:
        return []
    names = list(runs)
    out = [
        "### Where the time goes",
        "",
        "End to end: the wall time of the `datalog ingest --json` child. Its start-up is the wall time "
        "less the command's own `seconds` (interpreter, imports, settings, printing); the rest of "
        "`seconds` outside the step is registration of the raw objects, claims, the checks and "
        "Dagster's runs.",
        "",
        "| part | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def line(label: str, value: Callable[[dict], float | None]) -> None:
        out.append(f"| {label} | " + " | ".join(_s(value(runs[n])) for n in names) + " |")

    line("start-up (wall - `seconds`)", lambda i: i["wall_seconds"] - i["seconds"])
    line("registration, claims, checks, Dagster (`seconds` - step)", lambda i: i["seconds"] - i["step_seconds"])
    line("... of which a run, on average", lambda i: (i["seconds"] - i["step_seconds"]) / max(i["runs"], 1))
    line("`datalog_parquet` step", lambda i: i["step_seconds"])
    line("**wall**", lambda i: i["wall_seconds"])
    line("`datalog devices load` before it (a child of its own)", lambda i: i.get("devices_load_seconds"))
    start = results.get("startup")
    if start:
        out.append(
            f"\nStart-up alone: `datalog --help` {_s(start['help_seconds'])}; a child importing only the CLI, "
            f"Dagster and the definitions {_s(start['import_seconds'])}."
        )
    phased = {n: i["phase_seconds"] for n, i in runs.items() if isinstance(i.get("phase_seconds"), dict)}
    if phased:
        phases = list(dict.fromkeys(p for ph in phased.values() for p in ph))
        cols = list(phased)
        out += [
            "",
            "The step by phase (`phase_seconds` of `datalog ingest --json`, summed over the runs' batches):",
            "",
            "| phase | " + " | ".join(f"{c} | share of step" for c in cols) + " |",
            "|---|" + "---|---|" * len(cols),
        ]
        for phase in phases:
            cells = []
            for c in cols:
                value = phased[c].get(phase)
                share = _div(value, runs[c]["step_seconds"])
                cells.append(f"{_s(value)} | {'' if share is None else f'{share:.0%}'}")
            out.append(f"| {phase} | " + " | ".join(cells) + " |")
    else:
        out.append("\n`datalog ingest --json` gave no `phase_seconds`: no profile of the step by phase.")
    return out


def scaling(results: dict) -> list[str]:
    sc = results.get("scaling")
    if not sc:
        return []
    out = [
        f"### Linear cost and memory (DATALOG_RAM_LIMIT={sc['ram_limit']})",
        "",
        "The standard set, then the same with 1 and 3 copies under new device ids; a fresh `datalog ingest` for each.",
        "",
        "![seconds per million rows and peak memory against rows](scaling.png)",
        "",
        "| rows | files | end to end | s per M rows | step | step s per M rows | peak RSS | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in sc["points"]:
        out.append(
            f"| {p['rows']:,} | {p['files']:,} | {_s(p['wall_seconds'])} | {p['end_to_end_s_per_m']:.2f} | "
            f"{_s(p['step_seconds'])} | {p['step_s_per_m'] or 0:.2f} | {_mb(p['peak_rss_mb'])} | {p['runs']} |"
        )
    failed = [p for p in sc["points"] if p.get("error")]
    for p in failed:
        out.append(f"\n{p['rows']:,} rows: failed: `{p['error']}`")
    return out


def bigfile(results: dict) -> list[str]:
    big = results.get("bigfile")
    if not big:
        return []
    result = "success" if big["success"] else f"failed: `{big.get('error') or 'rows missing'}`"
    return [
        "### Big file",
        "",
        f"One raw key of {big['bytes'] / 1e9:.2f} GB, {big['rows']:,} lines (clean records of the "
        f"standard set, device ids renamed copy after copy), `DATALOG_RAM_LIMIT={big['ram_limit']}`, "
        "fresh `DATALOG_HOME`.",
        "",
        "| result | rows ingested / in the file | peak RSS | seconds (end to end) | step |",
        "|---|---|---|---|---|",
        f"| {result} | {big['rows_ingested']:,} / {big['rows']:,} | {_mb(big['peak_rss_mb'])} "
        f"(target <= {BIG_FILE_PEAK_MB} MB) | {_s(big['wall_seconds'])} | {_s(big.get('step_seconds'))} |",
    ]


def growing(results: dict) -> list[str]:
    grow = results.get("growing")
    if not grow:
        return []
    b = grow["batches"]
    steps = [x.get("step_seconds") for x in b]
    return [
        "### Growing partition",
        "",
        f"{len(b)} hourly batches of {grow['devices']} devices x {grow['rows_per_file']:,} rows into "
        f"one partition ({grow['partition']}), `datalog ingest --json` after each hour's files arrive; "
        f"{grow['rows_in_partition']:,} rows in the partition at the end.",
        "",
        "| | first batch | last batch | last / first | mean of last 3 / mean of first 3 |",
        "|---|---|---|---|---|",
        f"| step | {_s(steps[0])} | {_s(steps[-1])} | {_x(grow['ratio'])} | {_x(grow['ratio_of_3'])} |",
        f"| end to end | {_s(b[0]['wall_seconds'])} | {_s(b[-1]['wall_seconds'])} | "
        f"{_x(_div(b[-1]['wall_seconds'], b[0]['wall_seconds']))} | |",
        "",
        "Step seconds by batch: " + ", ".join("?" if s is None else f"{s:.2f}" for s in steps) + ".",
        *(f"\nBatch {n} failed: `{x['error']}`" for n, x in enumerate(b, start=1) if x.get("error")),
    ]


def before_after(results: dict, f: dict) -> list[str]:
    issue, report = BEFORE["issue"], BEFORE["report"]
    big = results.get("bigfile")
    after_big = ""
    if big:
        after_big = (
            f"{big['ram_limit']}: {'success' if big['success'] else 'failed'}, {big['rows_ingested']:,} of "
            f"{big['rows']:,} rows, peak {big['peak_rss_mb']:,.0f} MB"
        )

    def x_s(ratio: float | None, seconds: float | None) -> str:
        return "" if ratio is None else f"{ratio:.2f} x" + ("" if seconds is None else f" ({seconds:.1f} s)")

    rows = [
        (
            "bare DuckDB naive COPY",
            _rows_per_s(issue["bare_rows_per_s"]),
            _rows_per_s(report["bare_rows_per_s"]),
            _rows_per_s(f.get("naive")),
        ),
        ("step against the naive COPY", "", _x(report["step_vs_naive"]), _x(_div(f.get("step"), f.get("naive")))),
        ("step against the schema-safe COPY", "", _x(report["step_vs_safe"]), _x(_div(f.get("step"), f.get("safe")))),
        (
            "`datalog ingest` end to end against the naive COPY",
            x_s(issue["end_to_end_vs_naive"], issue["end_to_end_seconds"]),
            x_s(report["end_to_end_vs_naive"], report["end_to_end_seconds"]),
            x_s(_div(f.get("end_to_end"), f.get("naive")), f.get("end_to_end_seconds")),
        ),
        (
            "20,000 small files end to end against the naive COPY",
            x_s(issue["small_vs_naive"], issue["small_seconds"]),
            x_s(report["small_vs_naive"], report["small_seconds"]),
            x_s(_div(f.get("small"), f.get("small_naive")), f.get("small_seconds")),
        ),
        (
            "end to end against pyarrow file by file",
            _x(issue["end_to_end_rows_per_s"] / issue["pyarrow_rows_per_s"]),
            "",
            _x(_div(f.get("end_to_end"), f.get("pyarrow"))),
        ),
        (
            "end to end against Spark local[2]",
            _x(issue["end_to_end_rows_per_s"] / issue["spark_rows_per_s"]),
            "",
            _x(_div(f.get("end_to_end"), f.get("spark"))),
        ),
        ("pyarrow file by file", _s(issue["pyarrow_seconds"]), "", _s(f.get("pyarrow_seconds"))),
        ("Spark local[2]", _s(issue["spark_seconds"]), "", _s(f.get("spark_seconds"))),
        ("peak RSS of `datalog ingest`, standard set, 1GB", "", _mb(report["peak_mb"]), _mb(f.get("peak_mb"))),
        ("big file (1.2 GB, one key)", issue["big_file"], "", after_big),
    ]
    return [
        "### Before and after",
        "",
        "Before: issue 11's table and the report of 2026-12-01 (both as published); after: this run.",
        "",
        f"| measure | {issue['label']} | {report['label']} | this run |",
        "|---|---|---|---|",
        *(f"| {label} | {a} | {b} | {c} |" for label, a, b, c in rows),
    ]


def render(results: dict) -> str:
    f = figures(results)
    parts = [header(results)]
    parts += [
        peers_table(results, f),
        targets_table(results, f),
        profile(results),
        scaling(results),
        bigfile(results),
        growing(results),
        before_after(results, f),
    ]
    body = "\n\n".join("\n".join(p) for p in parts if p)
    return f"{BEGIN}\n{body}\n{END}"


def replace_figures(report: str, figures_md: str) -> str:
    """`report` with the text between the figures markers replaced (markers appended if absent)."""
    if BEGIN not in report or END not in report:
        return report.rstrip("\n") + f"\n\n{figures_md}\n"
    before, _, rest = report.partition(BEGIN)
    _, _, after = rest.partition(END)
    return before + figures_md + after
