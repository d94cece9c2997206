"""Channel allocation under a latency budget: HALP's latency-saliency knapsack on the lookup table.

Why the knapsack and not a greedy: a greedy that removes the cheapest step per millisecond first
can spend the budget on many small steps when one large step keeps more importance (the test
`test_knapsack_beats_greedy` is such a table); the multiple-choice knapsack is exact for the costs
it sees, and at 37 groups (ResNet-50; about 50 for a MobileNet) x <= 9 steps x 2,000 latency bins it
solves in milliseconds.

The costs: each group picks one of the widths the table measured (the staircase: a width that is no
faster than a wider one is dropped, so 112 is never chosen where 128 runs as fast). A layer's
latency depends on two groups (its input and output widths), so the knapsack sees each group's
saving with its neighbours held at their current widths (HALP's first-order view). That
overestimates the saving when both neighbours shrink, so the knapsack's saving target is bisected
until the table's *exact* prediction of the chosen widths meets the budget.

Torch-free and pure: the host supplies the channel importances (Torch-Pruning's group scores).
"""

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import EdgekitError
from .net import Groups

if TYPE_CHECKING:
    from .table import LatencyTable

BINS = 2000


class Step(object):
    def __init__(self, width: int, lost: float, saving: float) -> None:
        self.width, self.lost, self.saving = width, lost, saving

    def __repr__(self) -> str:
        return "Step({}, lost={:.3f}, saving={:.4f})".format(self.width, self.lost, self.saving)


def staircase(widths: Sequence[int], cost: Dict[int, float]) -> List[int]:
    """Keep only widths strictly faster than every wider one (the steps of the staircase)."""
    kept, best = [], float("inf")
    for w in sorted(widths, reverse=True):
        if cost[w] < best - 1e-12 or not kept:
            kept.append(w)
            best = min(best, cost[w])
    return sorted(kept)


def _bins(saving: float, unit: float) -> int:
    return min(BINS, max(0, int(np.ceil(saving / unit - 1e-9))))


def knapsack(options: Dict[str, List[Step]], need: float) -> Optional[Dict[str, int]]:
    """Pick one step per group, saving at least `need`, losing the least importance; None if impossible.

    Savings are rounded up to 1/BINS of `need` (so exact ties are kept: floors would drop a set that
    saves exactly `need`); a set may save up to len(options)/BINS of `need` less, which the caller's
    check of the table's exact prediction absorbs."""
    if need <= 0:
        return {g: max(s.width for s in steps) for g, steps in options.items()}
    unit = need / float(BINS)
    dps = [np.full(BINS + 1, np.inf)]
    dps[0][0] = 0.0
    args = []
    for steps in options.values():
        dp, new = dps[-1], np.full(BINS + 1, np.inf)
        arg = np.zeros(BINS + 1, dtype=np.int64)
        for i, step in enumerate(steps):
            k = _bins(step.saving, unit)
            cand = np.full(BINS + 1, np.inf)
            cand[k:BINS] = dp[0:BINS - k] + step.lost  # bin BINS means "at least need": it absorbs overflow
            cand[BINS] = np.min(dp[BINS - k:]) + step.lost
            better = cand < new
            new[better], arg[better] = cand[better], i
        dps.append(new)
        args.append(arg)
    if not np.isfinite(dps[-1][BINS]):
        return None
    picked: Dict[str, int] = {}
    b = BINS
    for i in range(len(args) - 1, -1, -1):
        group, steps = list(options.items())[i]
        step = steps[int(args[i][b])]
        picked[group] = step.width
        k = _bins(step.saving, unit)
        if b < BINS:
            b -= k
        else:
            b = BINS - k + int(np.argmin(dps[i][BINS - k:]))
    return picked


def _group_cost(table: "LatencyTable", touching: Dict[str, list], groups: Groups, group: str, width: int) -> float:
    trial = dict(groups)
    trial[group] = width
    net = table.net
    return sum(table.layer_cost(kind, net.width(trial, gin), net.width(trial, gout))
               for kind, gin, gout in touching[group])


def candidate_widths(table: "LatencyTable", group: str, current: int, min_channels: int) -> List[int]:
    """The table's widths for `group` from the floor up to the current width (the current one included)."""
    measured = [w for w in table.widths(group) if w <= current]
    above_floor = [w for w in measured if w >= min_channels]
    if not above_floor:  # the floor sits between steps, or above the current width: keep the nearest step
        above_floor = [w for w in table.widths(group) if w >= min(min_channels, current)][:1] or [current]
        above_floor = [min(above_floor[0], current)]
    return sorted(set(above_floor) | {current})


def floor_widths(table: "LatencyTable", current: Groups, min_channels: int) -> Groups:
    """Every group at its smallest measured width >= min_channels (the nearest step where none is)."""
    return {g: candidate_widths(table, g, w, min_channels)[0] for g, w in current.items()}


def check_floor(table: "LatencyTable", current: Groups, budget_ms: float, min_channels: int,
                what: str = "latency budget") -> float:
    """The table's floor in ms; one line when `budget_ms` is below it (no widths can meet it)."""
    floor_ms = table.predict_ms(floor_widths(table, current, min_channels))
    if budget_ms < floor_ms:
        size = int(table.key["image_size"])
        raise EdgekitError(
            "{} {:.3f} ms is below the latency table's floor of {:.3f} ms ({}, {}x{}, batch {}: every layer at "
            "its smallest measured width >= prune.min_channels {}); raise the target or lower prune.min_channels"
            .format(what, budget_ms, floor_ms, table.key["backend"], size, size, table.key["batch"], min_channels))
    return floor_ms


def allocate(table: "LatencyTable", current: Groups, importance: Dict[str, Sequence[float]], budget_ms: float,
             min_channels: int = 1, what: str = "latency budget") -> Tuple[Groups, float]:
    """Widths per group whose predicted latency meets `budget_ms`, keeping the most importance.

    `current` holds the prunable groups' widths (the fixed ones keep the description's). `importance[g]`
    scores each of group g's current channels (any scale: only their order within the group and their
    sums across groups matter). Returns the widths and their predicted ms."""
    touching: Dict[str, list] = {g: [] for g in current}
    for entry in table.net.layers:
        _, kind, gin, gout = entry
        for g in {gin, gout}:
            if g in touching:
                touching[g].append((kind, gin, gout))
    candidates = {g: candidate_widths(table, g, w, min_channels) for g, w in current.items()}
    floor = {g: ws[0] for g, ws in candidates.items()}
    floor_ms = check_floor(table, current, budget_ms, min_channels, what)
    now_ms = table.predict_ms(current)
    if now_ms <= budget_ms:
        return dict(current), now_ms
    options: Dict[str, List[Step]] = {}
    for g, widths in candidates.items():
        cost = {w: _group_cost(table, touching, current, g, w) for w in widths}
        order = np.sort(np.asarray(importance[g], dtype=float))  # ascending: the first ones go first
        lost = np.concatenate([[0.0], np.cumsum(order)])
        options[g] = [Step(w, float(lost[current[g] - w]), cost[current[g]] - cost[w])
                      for w in staircase(widths, cost)]
    lo = now_ms - budget_ms
    hi = sum(max(s.saving for s in steps) for steps in options.values())
    best: Optional[Tuple[Groups, float]] = None
    for attempt in range(20):
        need = lo if attempt == 0 else (lo + hi) / 2.0
        picked = knapsack(options, need)
        if picked is None:
            hi = need
            continue
        predicted = table.predict_ms(picked)
        if predicted <= budget_ms:
            best = (picked, predicted)
            hi = need
        else:
            lo = need
        if best is not None and hi - lo < 1e-3 * max(lo, 1e-9):
            break
    if best is None:  # the first-order savings never met it: everything at the floor does (checked above)
        best = (floor, floor_ms)
    return best
