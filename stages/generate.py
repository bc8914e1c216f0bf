"""Stage `generate`: write the built-in dataset (MVTec AD layout) under data/builtin/."""

from dataclasses import asdict

from anomaly_spotter import tracking
from anomaly_spotter.core.config import flatten
from anomaly_spotter.data.builtin import BUILTIN_CATEGORIES, BuiltinSpec, generate_dataset
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.stage import main, parse_args, progress_enabled, stage_outputs


def run() -> None:
    params, _ = parse_args(__doc__, per_category=False)
    spec = BuiltinSpec(**asdict(params.builtin))
    with stage_outputs(paths.BUILTIN_ROOT):
        generate_dataset(paths.BUILTIN_ROOT, BUILTIN_CATEGORIES, spec, params.seed, progress_enabled())
        with tracking.stage_run(
            "generate", None, {"seed": params.seed, **flatten(params.builtin, "builtin.")}
        ):
            pass


if __name__ == "__main__":
    main("generate", run)
