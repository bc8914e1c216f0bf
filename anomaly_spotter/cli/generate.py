"""`anomaly-spotter generate`: write one built-in category into a folder in the MVTec AD layout, such as
`sheet`, the high-resolution one (docs/resolution.md), which the pipeline's own `generate` stage leaves out
(its 100 images of 3 megapixels take a minute or two to draw)."""

from __future__ import annotations

import argparse

from anomaly_spotter.core.errors import ConfigError

GENERATE_EPILOG = """examples:
  anomaly-spotter generate --category sheet --out data/highres          # 2048 x 1536, defects of 5-20 px
  anomaly-spotter generate --category sheet --width 5472 --height 3648 --train 8 --out data/sheet20mp
  anomaly-spotter generate --category washer --image-size 256 --out data/washer256

Then point the pipeline at it, e.g. at native resolution in windows of 256 px:
  dvc exp run -S data.root=data/highres -S 'data.categories=[sheet]' -S data.image_size=256 \\
      -S data.resolution=native
"""


def cmd_generate(args: argparse.Namespace) -> int:
    from anomaly_spotter.core.config import Params, load_params
    from anomaly_spotter.data.builtin import BUILTIN_CATEGORIES, BuiltinSpec, generate_category, sheet

    params = load_params(args.params) if args.params.is_file() else Params()
    seed = params.seed if args.seed is None else args.seed
    b = params.builtin
    counts = (
        args.train if args.train is not None else b.n_train,
        args.test_good if args.test_good is not None else b.n_test_good,
        args.per_defect if args.per_defect is not None else b.n_test_per_defect,
    )
    if args.category == sheet.CATEGORY:
        if args.image_size is not None:
            raise ConfigError(
                "--image-size is for the square built-in categories; sheet takes --width --height"
            )
        folder = sheet.generate_sheet(
            args.out, seed, *counts, args.width or sheet.WIDTH, args.height or sheet.HEIGHT, progress=True
        )
    elif args.category in BUILTIN_CATEGORIES:
        if args.width or args.height:
            raise ConfigError(f"{args.category} images are square: use --image-size, not --width/--height")
        spec = BuiltinSpec(args.image_size or b.image_size, *counts)
        generate_category(args.out, args.category, spec, seed)
        folder = args.out / args.category
    else:
        names = ", ".join((*BUILTIN_CATEGORIES, sheet.CATEGORY))
        raise ConfigError(f"--category {args.category!r} is not a built-in category; use one of {names}")
    print(
        f"wrote {sum(1 for p in folder.rglob('*.png') if 'ground_truth' not in p.parts)} images to {folder}/"
    )
    return 0
