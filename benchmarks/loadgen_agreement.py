"""Does `edgekit bench` agree with MLPerf LoadGen? Both measure one model, alternately, round after round.

    .venv/bin/python benchmarks/loadgen_agreement.py [artifacts/digits/model.int8.cpu.onnx] [--rounds 3]

Each round runs edgekit's own harness (SingleStream, then Offline at --batch) and then LoadGen's
(SingleStream, then Offline with the same runner batching LoadGen's one query by --batch), so a busy
machine slows both alike. Printed per round and as medians: SingleStream p50/p90 and Offline
samples/s of each, and edgekit / LoadGen. LoadGen times every sample from issue to completion over
wall time; a harness that agrees shows ratios near 1 within the rounds' own spread.
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edgekit.device.bench.harness import benchmark  # noqa: E402
from edgekit.device.bench.loadgen import Settings, benchmark_loadgen  # noqa: E402

METRICS = (("single_stream p50 ms", "p50"), ("single_stream p90 ms", "p90"), ("offline samples/s", "offline"))


def edgekit_round(model: str, args: argparse.Namespace) -> dict:
    result = benchmark(model, None, threads=args.threads, scenarios=("single_stream", "offline"), batches=[args.batch],
                       min_queries=args.queries, min_seconds=args.seconds, power=False, progress=False,
                       log=lambda line: None)
    ss, off = result["scenarios"]["single_stream"]["latency"], result["scenarios"]["offline"]
    return {"p50": ss["p50_ms"], "p90": ss["p90_ms"], "offline": off["best_throughput"]}


def loadgen_round(model: str, args: argparse.Namespace, logs: str) -> dict:
    settings = Settings(min_queries=args.queries, min_seconds=args.seconds, batch=args.batch)
    result = benchmark_loadgen(model, None, threads=args.threads, scenarios=("single_stream", "offline"),
                               modes=["performance"], settings=settings, logs_root=logs, log=lambda line: None)
    ss, off = result["scenarios"]["single_stream"], result["scenarios"]["offline"]
    return {"p50": ss["latency"]["p50_ms"], "p90": ss["latency"]["p90_ms"], "offline": off["best_throughput"],
            "validity": "SingleStream {}, Offline {}".format(ss["validity"], off["validity"])}


def row(label: str, mine: dict, theirs: dict) -> str:
    cells = ["{:>9.3f} {:>9.3f} {:>6.3f}".format(mine[k], theirs[k], mine[k] / theirs[k]) for _, k in METRICS]
    return "{:<8} {}".format(label, "   ".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="artifacts/digits/model.int8.cpu.onnx")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum seconds per scenario, both harnesses")
    parser.add_argument("--queries", type=int, default=100, help="minimum SingleStream queries (Offline: x batch)")
    parser.add_argument("--batch", type=int, default=8, help="the Offline batch of both harnesses")
    parser.add_argument("--threads", type=int, help="runtime threads (default: the runtime's choice)")
    args = parser.parse_args()
    if not os.path.isfile(args.model):
        print("no model at {}: run `make deploy` first, or name an ONNX file".format(args.model), file=sys.stderr)
        return 2
    print("{} on {} rounds, {:.1f} s a scenario, Offline batch {}".format(args.model, args.rounds, args.seconds,
                                                                         args.batch))
    print("{:<8} {}".format("", "   ".join("{:<26}".format(name) for name, _ in METRICS)))
    print("{:<8} {}".format("round", "   ".join("{:>9} {:>9} {:>6}".format("edgekit", "LoadGen", "ratio")
                                                for _ in METRICS)))
    mine, theirs = [], []
    with tempfile.TemporaryDirectory() as logs:
        for i in range(args.rounds):
            mine.append(edgekit_round(args.model, args))
            theirs.append(loadgen_round(args.model, args, os.path.join(logs, str(i))))
            print(row(str(i + 1), mine[-1], theirs[-1]) + "   LoadGen: " + theirs[-1]["validity"])
    medians = [{k: statistics.median(r[k] for r in runs) for _, k in METRICS} for runs in (mine, theirs)]
    print(row("median", medians[0], medians[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
