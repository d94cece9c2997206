"""Latency statistics, as MLPerf LoadGen and trtexec report them."""

from typing import Dict, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def latency_stats(seconds: Sequence[float]) -> Dict[str, float]:
    """Percentiles, min, max, mean and std in milliseconds of a list of latencies in seconds."""
    if len(seconds) == 0:
        raise ValueError("no latencies to summarise")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    stats = {"p{}_ms".format(p): float(np.percentile(ms, p)) for p in PERCENTILES}
    stats.update({"min_ms": float(ms.min()), "max_ms": float(ms.max()), "mean_ms": float(ms.mean()),
                  "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0, "count": int(ms.size)})
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}
