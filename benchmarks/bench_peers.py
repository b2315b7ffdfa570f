"""The peers a user would pick instead of the platform, each run as a child process:

    python benchmarks/bench_peers.py pyarrow RAW DEVICES_CSV OUT
    python benchmarks/bench_peers.py spark RAW DEVICES_CSV OUT

Both write the same columns as the bare DuckDB COPY (the record's fields, `source_file`,
`datetime_wita`, and the hive columns `hiveperiod` and `dstrct_code`), hive-partitioned by date and
region, zstd Parquet, and print one JSON object: the seconds of the job without the process's
own start-up (`job_seconds`) and what it read.

The heartbeat rule of both, the main rule of the platform's without its corner cases: a number (or
a string holding one) is an epoch whose unit follows its magnitude (below 1e10 seconds, below 1e13
milliseconds, below 1e16 microseconds, else nanoseconds); a string `YYYY-MM-DD[T ]HH:MM:SS` with
`Z` or `+HH:MM` is that instant, without a zone UTC; instants outside [2000, 2100) and anything
else are invalid, and rows with an invalid heartbeat are dropped.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

_NUMBER = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_TZ_HOURS = 8
_MIN_YEAR, _MAX_YEAR = 2000, 2100


def read_registry(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        return {row["device_id"]: row["dstrct_code"] for row in csv.DictReader(f)}


def raw_files(raw: Path) -> list[Path]:
    return sorted(p for p in raw.rglob("*.json") if "_registry" not in p.parts)


# -- pyarrow, file by file -------------------------------------------------------------------------


def pyarrow_job(raw: Path, registry_path: Path, out: Path) -> dict:
    """For each file: `pyarrow.json.read_json` (or, when the file has a line it cannot parse,
    `json.loads` line by line, dropping the lines that fail), the heartbeat rule with
    `pyarrow.compute`, the region from the registry, then `pyarrow.dataset.write_dataset`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.json as pj

    registry = read_registry(registry_path)
    devices = pa.array(list(registry), pa.string())
    regions = pa.array(list(registry.values()), pa.string())
    partitioning = ds.partitioning(
        pa.schema([("hiveperiod", pa.string()), ("dstrct_code", pa.string())]), flavor="hive"
    )
    options = ds.ParquetFileFormat().make_write_options(compression="zstd")
    low = pa.scalar(f"{_MIN_YEAR}-01-01", pa.string()).cast(pa.timestamp("us"))
    high = pa.scalar(f"{_MAX_YEAR}-01-01", pa.string()).cast(pa.timestamp("us"))

    def from_epoch(values: pa.Array) -> pa.Array:
        v = pc.cast(values, pa.float64(), safe=False)
        size = pc.abs(v)
        micros = pc.case_when(
            pc.make_struct(pc.less(size, 1e10), pc.less(size, 1e13), pc.less(size, 1e16)),
            pc.multiply(v, 1e6),
            pc.multiply(v, 1e3),
            v,
            pc.divide(v, 1e3),
        )
        return pc.cast(pc.cast(pc.floor(micros), pa.int64()), pa.timestamp("us"))

    def from_text(text: pa.Array) -> pa.Array:
        text = pc.utf8_trim_whitespace(text)
        number = pc.match_substring_regex(text, _NUMBER)
        epoch = from_epoch(pc.cast(pc.if_else(number, text, pa.scalar(None, pa.string())), pa.float64()))
        iso = [
            pc.strptime(text, fmt, "us", error_is_null=True)
            for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")
        ]
        iso = [pc.cast(pc.cast(t, pa.int64()), pa.timestamp("us")) for t in iso]
        return pc.coalesce(epoch, *iso)

    def instant(heartbeat: pa.Array) -> pa.Array:
        if pa.types.is_timestamp(heartbeat.type):  # read_json types ISO strings as timestamps (UTC)
            ts = heartbeat.cast(pa.timestamp(heartbeat.type.unit)).cast(pa.timestamp("us"))
        elif pa.types.is_integer(heartbeat.type) or pa.types.is_floating(heartbeat.type):
            ts = from_epoch(heartbeat)
        else:
            ts = from_text(pc.cast(heartbeat, pa.string()))
        return pc.if_else(pc.and_(pc.greater_equal(ts, low), pc.less(ts, high)), ts, None)

    def read(path: Path) -> pa.Table:
        try:
            return pj.read_json(path)
        except pa.ArrowInvalid:
            records = []
            for line in path.read_bytes().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    hb = record.get("heartbeat")
                    record["heartbeat"] = None if hb is None else hb if isinstance(hb, str) else json.dumps(hb)
                    records.append(record)
            return pa.Table.from_pylist(records)

    started = time.perf_counter()
    files = raw_files(raw)
    rows = 0
    for n, path in enumerate(files):
        table = read(path)
        if "heartbeat" not in table.column_names:
            continue
        heartbeat = table.column("heartbeat").combine_chunks()
        ts = instant(heartbeat)
        local = pc.cast(pc.add(pc.cast(ts, pa.int64()), _TZ_HOURS * 3_600_000_000), pa.timestamp("us"))
        region = pc.take(regions, pc.index_in(table.column("device_id"), value_set=devices))
        table = (
            table.set_column(table.schema.get_field_index("heartbeat"), "heartbeat", pc.cast(heartbeat, pa.string()))
            .append_column("source_file", pa.array([str(path)] * table.num_rows, pa.string()))
            .append_column("datetime_wita", local)
            .append_column("hiveperiod", pc.strftime(local, "%Y-%m-%d"))
            .append_column("dstrct_code", region)
        )
        table = table.filter(pc.and_(pc.is_valid(ts), pc.is_valid(region)))
        rows += table.num_rows
        ds.write_dataset(
            table,
            out,
            format="parquet",
            partitioning=partitioning,
            basename_template=f"part-{n}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            file_options=options,
        )
    return {"job_seconds": time.perf_counter() - started, "files": len(files), "rows": rows}


# -- Spark local[2] --------------------------------------------------------------------------------


def spark_job(raw: Path, registry_path: Path, out: Path) -> dict:
    """`spark.read.json` of the raw directory, every `*.json` under it (types inferred from every
    line, Spark's default), the heartbeat rule in Spark SQL, a broadcast join with the registry,
    then `write.partitionBy("hiveperiod", "dstrct_code").parquet`. `session_seconds` is the JVM's
    start-up and the session's creation; `job_seconds` the rest."""
    started = time.perf_counter()
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("datalog-benchmark")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    session_seconds = time.perf_counter() - started
    job_started = time.perf_counter()
    registry = spark.createDataFrame(list(read_registry(registry_path).items()), "device_id string, dstrct_code string")
    records = spark.read.option("recursiveFileLookup", "true").option("pathGlobFilter", "*.json").json(str(raw))
    text = F.trim(F.col("heartbeat").cast("string"))
    number = text.cast("double")
    size = F.abs(number)
    micros = (
        F.when(size < 1e10, number * 1e6)
        .when(size < 1e13, number * 1e3)
        .when(size < 1e16, number)
        .otherwise(number / 1e3)
    )
    ts = F.when(text.rlike(_NUMBER), F.timestamp_micros(F.floor(micros).cast("long"))).otherwise(F.to_timestamp(text))
    local = F.col("__ts") + F.expr(f"INTERVAL {_TZ_HOURS} HOURS")
    rows = (
        records.withColumn("__ts", ts)
        .where(
            (F.col("__ts") >= F.lit(f"{_MIN_YEAR}-01-01").cast("timestamp"))
            & (F.col("__ts") < F.lit(f"{_MAX_YEAR}-01-01").cast("timestamp"))
        )
        .withColumn("heartbeat", F.col("heartbeat").cast("string"))
        .withColumn("source_file", F.input_file_name())
        .withColumn("datetime_wita", local)
        .withColumn("hiveperiod", F.date_format(local, "yyyy-MM-dd"))
        .drop("__ts")
    )
    if "_corrupt_record" in rows.columns:
        rows = rows.drop("_corrupt_record")
    (
        rows.join(F.broadcast(registry), "device_id")
        .write.mode("overwrite")
        .option("compression", "zstd")
        .partitionBy("hiveperiod", "dstrct_code")
        .parquet(str(out))
    )
    job_seconds = time.perf_counter() - job_started
    jvm_peak_mb = _peak_rss_mb(spark.sparkContext._gateway.proc.pid)
    spark.stop()
    return {
        "session_seconds": session_seconds,
        "job_seconds": job_seconds,
        "files": len(raw_files(raw)),
        "jvm_peak_rss_mb": jvm_peak_mb,
    }


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a running process (the JVM, which the driver never waits for), in MB."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    line = next((x for x in status.read_text().splitlines() if x.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024 if line else None


def main(argv: list[str]) -> int:
    kind, raw, registry_path, out = argv
    job = {"pyarrow": pyarrow_job, "spark": spark_job}[kind]
    print(json.dumps(job(Path(raw), Path(registry_path), Path(out))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
