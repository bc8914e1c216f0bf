"""The built-in synthetic dataset: MVTec AD layout, generated in seconds so a fresh clone needs no download.

Categories (every image is RGB; good images vary in pose, lighting and noise):

- ``fabric``: denim-like 2/1 twill (indigo warp, pale weft) with jittered period, angle, phase,
  contrast, per-thread thickness, uneven dye and sensor noise.
  Defects: ``hole`` (dark backing shows through), ``stain`` (tinted blotch), ``thread`` (foreign fibre).
- ``washer``: a keyed steel washer on a plain slate background; position, rotation (the inner key tab
  shows it), size, light direction and brightness vary, with a soft cast shadow.
  Defects: ``scratch`` (thin bright or dark line), ``chip`` (missing piece of an edge), ``rust`` (spot).
- ``label``: a printed label (colour band, knocked-out name, two text lines, barcode, icon) on a dark
  surface; the label's pose, the print's registration and the ink density vary.
  Defects: ``misprint`` (missing, faded or doubled print), ``scratch`` (scuff line), ``stain`` (blotch).
- ``board``: an assembled circuit board (chip, resistor, capacitor, three LEDs, pads, silkscreen,
  traces) on a dark surface; the board's pose, each part's placement within its tolerance, light and
  noise vary. Its defects are structural, the kind a patch-local detector finds hard: ``missing`` (a
  part absent, its pads showing), ``misplaced`` (a part shifted off its footprint or rotated beyond the
  tolerance, a capacitor turned against its polarity mark), ``count`` (a pin missing from the chip, or
  a chip variant with one pin more or fewer per row) and ``color`` (two LEDs swapped, two resistor
  bands swapped, or a capacitor of another sleeve colour): every colour and shape in a defect image
  also occurs on good boards, only not there.
- ``component``: a three-lead part (a TO-220-like package) seated in an assembly fixture (pocket, lead
  sockets, locating pins, screws); the part's seat within its tolerance, the plastic's and the leads'
  colour, the fixture's place in view, light and noise vary. Defects are about what is where:
  ``missing`` (a lead, the metal tab or the whole part absent), ``misplaced`` (shifted off its seat, or
  turned by 2 to 30 degrees), ``bent_lead`` (one lead bent sideways), ``cut_lead`` (one lead cut short of
  its socket); and one of appearance, ``damaged_case`` (a piece broken off the plastic, faint to plain).

Defect size and contrast are drawn stratified over a severity in (0, 1), so every defect type ranges
from small, faint ones to large, obvious ones. Masks are pixel-exact: a mask pixel is 255 exactly where
the defect image differs from the same scene rendered without the defect.

Determinism: each image's random stream is seeded from (seed, category, split/defect, index) through
``np.random.SeedSequence`` (with CRC32 of the names, never ``hash()``), and PNGs are written by Pillow
with fixed compression and no metadata, so a seed gives byte-identical files on one platform, and one
category's files do not depend on which other categories are generated.
"""

from anomaly_spotter.data.builtin.common import BUILTIN_CATEGORIES, MIN_DELTA, BuiltinSpec
from anomaly_spotter.data.builtin.generate import generate_category, generate_dataset

__all__ = ["BUILTIN_CATEGORIES", "MIN_DELTA", "BuiltinSpec", "generate_category", "generate_dataset"]
