"""A Compute-to-Data algorithm: per-station yearly weather summary (standard library only).

Reads every input file under $INPUTS/<DID>/<n> (CSV with the columns date,
station, tmin_c, tmax_c, rain_mm), and writes $OUTPUTS/summary.json:

    {"stations": {"<name>": {"days", "mean_c", "min_c", "min_date", "max_c",
                             "max_date", "rain_mm", "wet_days"}, ...},
     "rows": <rows read>, "files": <files read>}

mean_c is the mean of the daily means (tmin+tmax)/2; every number is rounded
to 2 decimals.
"""
import csv
import json
import os
import sys
from pathlib import Path


def summarise(paths):
    stations = {}
    rows = 0
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                tmin, tmax = float(record["tmin_c"]), float(record["tmax_c"])
                rain = float(record["rain_mm"])
                s = stations.setdefault(record["station"], {
                    "days": 0, "sum": 0.0, "min_c": tmin, "min_date": record["date"],
                    "max_c": tmax, "max_date": record["date"], "rain_mm": 0.0, "wet_days": 0})
                s["days"] += 1
                s["sum"] += (tmin + tmax) / 2
                if tmin < s["min_c"]:
                    s["min_c"], s["min_date"] = tmin, record["date"]
                if tmax > s["max_c"]:
                    s["max_c"], s["max_date"] = tmax, record["date"]
                s["rain_mm"] += rain
                s["wet_days"] += rain > 0
                rows += 1
    result = {}
    for name in sorted(stations):
        s = stations[name]
        result[name] = {"days": s["days"], "mean_c": round(s["sum"] / s["days"], 2),
                        "min_c": round(s["min_c"], 2), "min_date": s["min_date"],
                        "max_c": round(s["max_c"], 2), "max_date": s["max_date"],
                        "rain_mm": round(s["rain_mm"], 2), "wet_days": s["wet_days"]}
    return {"stations": result, "rows": rows, "files": len(paths)}


def main():
    inputs = Path(os.environ.get("INPUTS", "/data/inputs"))
    outputs = Path(os.environ.get("OUTPUTS", "/data/outputs"))
    dids = json.loads(os.environ.get("DIDS", "[]"))
    print(f"weather_summary: inputs for {len(dids)} dataset(s) in {inputs}")
    paths = sorted(p for p in inputs.glob("*/*") if p.is_file())
    if not paths:
        print("weather_summary: no input files found", file=sys.stderr)
        return 1
    for path in paths:
        print(f"weather_summary: reading {path.parent.name[:16]}.../{path.name} ({path.stat().st_size} bytes)")
    summary = summarise(paths)
    print(f"weather_summary: {summary['rows']} rows, {len(summary['stations'])} stations")
    for name, s in summary["stations"].items():
        print(f"  {name:<16} mean {s['mean_c']:6.2f} C  min {s['min_c']:6.1f} C  max {s['max_c']:6.1f} C  "
              f"rain {s['rain_mm']:7.1f} mm")
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"weather_summary: wrote {outputs / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
