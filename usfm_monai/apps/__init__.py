"""The tools around the library: the ``usfm-monai`` command line, bundle packaging, the authors'-weights converter,
and the runners of repeated bundle runs (seeds, the label-efficiency/ablation grid) with the bundle runner they
share. The library (``data``, ``transforms``, ``networks``, ``losses``, ``engines``, ``handlers``) never imports
from here."""
