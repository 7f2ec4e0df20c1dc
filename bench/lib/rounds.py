"""Several rounds of the same measurements, one figure per target: the median round.

On a small shared VM one measurement of a target can land in a noisy second and another
target's in a calm one (between full runs the throughput and connection-rate ratios
moved by 15-25%). Rounds run every test for every target in turn, so each target is
measured as often and as spread over time as every other, and the median round is
kept whole (its bytes with its CPU seconds); the other rounds' figures stay in the
JSON beside it, so the spread can be read and nothing is hidden.
"""

from __future__ import annotations

# The figure that ranks a test's rounds: what the table shows for it.
RANKED_BY = {
    "latency": "p50_us",
    "connect_seq": "per_second",
    "connect_50": "per_second",
    "udp": "loss",
    "tcp_1_up": "bits_per_second",
    "tcp_1_down": "bits_per_second",
    "tcp_8_up": "bits_per_second",
    "tcp_8_down": "bits_per_second",
    "shaping_cost": "gbps",  # bench.shaping --cost
}


def median_round(test: str, runs: list[dict]) -> dict:
    """The round with the median figure (the upper one of an even count), with every
    round's figure under "rounds"; failed rounds are counted, and only when all failed
    is the result an error (the last one)."""
    if len(runs) == 1:
        return runs[0]
    key = RANKED_BY.get(test)
    good = [run for run in runs if "error" not in run and key and run.get(key) is not None]
    if not good:
        return dict(runs[-1], failed_rounds=len(runs))
    ranked = sorted(good, key=lambda run: run[key])
    chosen = dict(ranked[len(ranked) // 2])
    chosen["rounds"] = [run.get(key) if "error" not in run else None for run in runs]
    chosen["failed_rounds"] = len(runs) - len(good)
    return chosen
