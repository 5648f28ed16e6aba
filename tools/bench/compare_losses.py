"""Two flame-train runs' losses, step by step, from their metrics.jsonl (same seed, same data, one path
changed): prints the largest absolute difference, the mean absolute difference and the last losses.

  compare_losses.py A/metrics.jsonl B/metrics.jsonl"""
import json
import sys


def losses(path):
    return {r["step"]: r["loss"] for r in map(json.loads, open(path)) if "loss" in r}


def main(a_path, b_path):
    a, b = losses(a_path), losses(b_path)
    steps = sorted(set(a) & set(b))
    if not steps:
        raise SystemExit("compare_losses: no step in both runs")
    diffs = [abs(a[s] - b[s]) for s in steps]
    worst = max(range(len(steps)), key=lambda i: diffs[i])
    print(f"losses at {len(steps)} logged steps ({steps[0]}..{steps[-1]}): max |diff| {diffs[worst]:.4f} "
          f"(step {steps[worst]}: {a[steps[worst]]:.4f} vs {b[steps[worst]]:.4f}), mean |diff| "
          f"{sum(diffs) / len(diffs):.4f}; last {a[steps[-1]]:.4f} vs {b[steps[-1]]:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
