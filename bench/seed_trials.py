"""Seeds as separate trials (what kdsweep does) vs all seeds inside one trial (the alternative).

    python bench/seed_trials.py [--quick] [--seeds 3]

The same soft-KD config and N seeds, one at a time on all the cores in both arms:

- separate: `sweeps/temperature.py --seeds N --cpus-per-trial <all>` (seed groups, one Tune
  trial per seed: each pays its own worker start, imports, data and teacher-output reads);
- shared: one process that runs the N seeds one after another with `local_session` (what one
  trial holding every seed of a config would do: one start, one data pipeline, one read of the
  cached teacher outputs).

Printed: wall of each arm and the ratio separate / shared: the most that folding a config's
seeds into one trial could save here. (Separate trials also run a config's seeds in parallel on
free slots, which the shared arm cannot; this bench runs both one seed at a time.)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def shared(cfg: dict, seeds: int, cpus: float) -> float:
    """Every seed in this process, one after another (one data pipeline, warm caches)."""
    from trainables.text.trainable import CONDITIONS
    from trainables.tune_io import local_session

    conf = common.config_fields(cfg, "soft")
    t0 = time.perf_counter()
    for seed in range(seeds):
        with (
            tempfile.TemporaryDirectory(prefix="kdsweep-bench-") as tmp,
            local_session(Path(tmp), cpus=cpus),
        ):
            CONDITIONS["soft"]({**conf, "seed": seed})
    return time.perf_counter() - t0


def separate(cfg: dict, seeds: int, cpus: int) -> float:
    """The sweep with one Tune trial per seed, one trial at a time."""
    work = common.bench_dir("seed_trials")
    flags = ["--seeds", str(seeds), "--no-test", "--no-asha", "--cpus-per-trial", str(cpus)]
    cmd = common.sweep_command("temperature", cfg, work, "separate", *flags)
    cmd.insert(2, f"temperature={cfg['temperature']}")  # one config: the YAML grids T
    return common.run_logged(cmd, work / "separate.log", work)


def run(quick: bool = False, seeds: int = 3) -> list[common.Result]:
    cpus = os.cpu_count() or 2
    cfg = common.base_config(quick, epochs=2 if quick else 3)
    common.ensure_teacher(quick)
    print(f"seed_trials: soft KD, {seeds} seeds x {cfg['epochs']} epochs, {cpus} CPU(s) per seed")
    t_sep = separate(cfg, seeds, cpus)
    t_sh = shared({**cfg, "threads": cpus}, seeds, cpus)
    ratio = t_sep / t_sh
    print(f"  separate trials {t_sep:.0f} s, one process {t_sh:.0f} s")
    return [
        common.Result(
            "seed_trials",
            "seeds as separate trials / in one process, wall",
            ratio,
            "",
            None,
            f"{seeds} seeds one at a time: {t_sep:.0f} s vs {t_sh:.0f} s "
            f"({(t_sep - t_sh) / seeds:.0f} s per seed of start-up and reads)",
        )
    ]


def main(argv: list[str] | None = None) -> list[common.Result]:
    common.setup_env()
    p = common.parser(__doc__)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    results = run(args.quick, args.seeds)
    common.finish(results, args.json)
    return results


if __name__ == "__main__":
    main()
