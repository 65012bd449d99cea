"""The report's statistics: mean and sample standard deviation over seeds, and the paired
difference against the baseline with its 95% confidence interval (Student's t).
"""
import math
import statistics

__all__ = ["mean_std", "paired_delta", "paired_t", "holm"]


def mean_std(values):
    """(n, mean, sample std or None when n < 2) of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return 0, None, None
    return len(xs), statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def paired_delta(pairs):
    """pairs: [(value, baseline value)] of the same seeds -> (n, mean difference, sd, CI low,
    CI high); the CI is None with fewer than 2 pairs."""
    ds = [a - b for a, b in pairs if a is not None and b is not None]
    if not ds:
        return 0, None, None, None, None
    n, m = len(ds), statistics.mean(ds)
    if n < 2:
        return n, m, None, None, None
    from scipy.stats import t
    sd = statistics.stdev(ds)
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return n, m, sd, m - half, m + half


def paired_t(ds):
    """(n, mean, sd, two-sided p of the paired t-test against 0) of the differences ds."""
    ds = [float(d) for d in ds if d is not None and math.isfinite(float(d))]
    n = len(ds)
    if n < 2:
        return n, (ds[0] if ds else None), None, None
    from scipy.stats import t
    m, sd = statistics.mean(ds), statistics.stdev(ds)
    if sd == 0:
        return n, m, sd, (1.0 if m == 0 else 0.0)
    stat = m / (sd / math.sqrt(n))
    return n, m, sd, float(2 * t.sf(abs(stat), n - 1))


def holm(contrasts, alpha=0.05):
    """Holm's step-down correction of m contrasts, each a list of paired differences ->
    per contrast {"n", "mean", "sd", "p", "p_holm", "level", "low", "high", "holds"}.

    The contrasts are ranked by p (ascending); the i-th is tested at alpha / (m - i + 1) while
    every earlier one held; from the first that does not hold on, every later one is tested at
    that first failure's level. Each interval is the t-interval at the level its contrast was
    tested at (1 - level), so an interval excludes 0 exactly when its contrast holds. p_holm is
    the Holm-adjusted p-value (the running maximum of (m - i + 1) * p, at most 1)."""
    from scipy.stats import t
    stats = [paired_t(ds) for ds in contrasts]
    m = len(stats)
    order = sorted(range(m), key=lambda k: (stats[k][3] is None, stats[k][3] or 0.0))
    out = [None] * m
    running, stopped_level = 0.0, None
    for i, k in enumerate(order):
        n, mean, sd, p = stats[k]
        level = stopped_level if stopped_level is not None else alpha / (m - i)
        if p is None:
            out[k] = {"n": n, "mean": mean, "sd": sd, "p": None, "p_holm": None,
                      "level": level, "low": None, "high": None, "holds": False}
            continue
        running = max(running, min(1.0, (m - i) * p))
        holds = stopped_level is None and p <= level
        if not holds and stopped_level is None:
            stopped_level = level
        half = float(t.ppf(1 - level / 2, n - 1)) * sd / math.sqrt(n)
        out[k] = {"n": n, "mean": mean, "sd": sd, "p": p, "p_holm": running, "level": level,
                  "low": mean - half, "high": mean + half, "holds": holds}
    return out
