"""The report's statistics: mean and sample standard deviation over seeds, and the paired
difference against the baseline with its 95% confidence interval (Student's t).
"""
import math
import statistics

__all__ = ["mean_std", "paired_delta"]


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
