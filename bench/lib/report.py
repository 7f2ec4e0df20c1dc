"""One table: every figure of the subject beside the same figure of each baseline, with the
ratio subject/baseline, all from the same run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Results = dict[str, dict[str, dict]]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "higher" or "lower": printed as an arrow so the ratio reads right
    extract: Callable[[Results, str], float | None]
    decimals: int = 2


def _field(test: str, name: str, scale: float = 1.0) -> Callable[[Results, str], float | None]:
    def extract(results: Results, target: str) -> float | None:
        value = results.get(test, {}).get(target, {}).get(name)
        return None if value is None else value * scale
    return extract


def _cpu_efficiency(results: Results, target: str) -> float | None:
    run = results.get("tcp_1_up", {}).get(target, {})
    cpu = run.get("cpu_seconds")
    if not cpu or run.get("bytes") is None or run.get("tunnel_processes", 0) == 0:
        return None
    return run["bytes"] / cpu / 1e6


def _peak_rss(results: Results, target: str) -> float | None:
    peaks = [results.get(test, {}).get(target, {}).get("peak_rss")
             for test in ("tcp_1_up", "tcp_1_down", "tcp_8_up", "tcp_8_down")]
    peaks = [p for p in peaks if p]
    return max(peaks) / 1e6 if peaks else None


def _added_latency(results: Results, target: str) -> float | None:
    """p50 minus direct's p50: what the tunnel itself adds to a round trip."""
    run = results.get("latency", {})
    direct = run.get("direct", {}).get("p50_us")
    value = run.get(target, {}).get("p50_us")
    if target == "direct" or direct is None or value is None:
        return None
    return value - direct


def _udp_loss(results: Results, target: str) -> float | None:
    loss = results.get("udp", {}).get(target, {}).get("loss")
    return None if loss is None else loss * 100


def _scale_rss(side: str) -> Callable[[Results, str], float | None]:
    def extract(results: Results, target: str) -> float | None:
        per_channel = results.get("scale", {}).get(target, {}).get("rss_per_channel")
        if not per_channel or side not in per_channel:
            return None
        return per_channel[side] / 1024
    return extract


def _scale_total(results: Results, target: str) -> float | None:
    run = results.get("scale", {}).get(target, {})
    if not run.get("rss_per_channel"):
        return None
    return run["rss_per_channel_total"] / 1024


METRICS = [
    Metric("tcp_1_up", "TCP 1 stream ->, Gbit/s", "higher",
           _field("tcp_1_up", "bits_per_second", 1e-9)),
    Metric("tcp_1_down", "TCP 1 stream <- (-R), Gbit/s", "higher",
           _field("tcp_1_down", "bits_per_second", 1e-9)),
    Metric("tcp_8_up", "TCP 8 streams ->, Gbit/s", "higher",
           _field("tcp_8_up", "bits_per_second", 1e-9)),
    Metric("tcp_8_down", "TCP 8 streams <- (-R), Gbit/s", "higher",
           _field("tcp_8_down", "bits_per_second", 1e-9)),
    Metric("cpu", "MB forwarded per tunnel CPU-s", "higher", _cpu_efficiency, 0),
    Metric("peak_rss", "peak tunnel RSS under iperf3, MB", "lower", _peak_rss, 0),
    Metric("latency_p50", "64 B round trip p50, us", "lower", _field("latency", "p50_us"), 0),
    Metric("latency_added", "64 B round trip p50 minus direct's, us", "lower", _added_latency, 0),
    Metric("latency_p99", "64 B round trip p99, us", "lower", _field("latency", "p99_us"), 0),
    Metric("connect_seq", "connections/s, sequential", "higher",
           _field("connect_seq", "per_second"), 0),
    Metric("connect_50", "connections/s, 50 concurrent", "higher",
           _field("connect_50", "per_second"), 0),
    Metric("udp_rate", "UDP datagrams/s received", "higher",
           _field("udp", "received_per_second"), 0),
    Metric("udp_loss", "UDP loss, %", "lower", _udp_loss, 2),
    Metric("scale_errors", "scale: errors (must be 0)", "lower", _field("scale", "errors"), 0),
    Metric("scale_open", "scale: seconds to open all", "lower", _field("scale", "open_seconds"), 1),
    Metric("scale_echo", "scale: seconds for all to echo", "lower",
           _field("scale", "echo_seconds"), 2),
    Metric("scale_rss_entry", "scale: KB RSS/channel, entry side", "lower", _scale_rss("entry"), 1),
    Metric("scale_rss_exit", "scale: KB RSS/channel, exit side", "lower", _scale_rss("exit"), 1),
    Metric("scale_rss_total", "scale: KB RSS/channel, all", "lower", _scale_total, 1),
]


def _format(value: float, decimals: int) -> str:
    # Small figures (hypertele's Gbit/s, a ratio of 0.004) keep three significant digits.
    if 0 < abs(value) < 1:
        return f"{value:.3g}"
    return f"{value:,.{decimals}f}"


def _format_ratio(ratio: float) -> str:
    if ratio >= 10:
        return f"{ratio:,.0f}x"
    return f"{ratio:.2f}x" if ratio >= 1 else f"{ratio:.2g}x"


def build_rows(results: Results, targets: list[str], subject: str) -> list[dict]:
    """Rows for JSON and for the text table: value per target, ratio subject/target."""
    rows = []
    for metric in METRICS:
        values = {target: metric.extract(results, target) for target in targets}
        if all(v is None for v in values.values()):
            continue
        subject_value = values.get(subject)
        ratios = {}
        for target, value in values.items():
            if target != subject and value and subject_value is not None:
                ratios[target] = subject_value / value
        rows.append({"metric": metric.key, "label": metric.label, "better": metric.better,
                     "decimals": metric.decimals, "values": values, "ratios": ratios})
    return rows


def render_table(rows: list[dict], targets: list[str], subject: str) -> str:
    header = ["metric"] + [f"{t} (subject)" if t == subject else t for t in targets]
    lines = [header]
    for row in rows:
        arrow = "^" if row["better"] == "higher" else "v"
        cells = [f"{row['label']} {arrow}"]
        for target in targets:
            value = row["values"].get(target)
            if value is None:
                cells.append("-")
                continue
            cell = _format(value, row["decimals"])
            ratio = row["ratios"].get(target)
            if ratio is not None:
                cell += f" ({_format_ratio(ratio)})"
            cells.append(cell)
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                             for i, cell in enumerate(line)).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append(f"(x) = {subject} / that column, same run; ^ higher is better, v lower is better")
    return "\n".join(out)
