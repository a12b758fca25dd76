"""usfm-monai: USFM, the Universal Ultrasound Foundation Model (Jiao et al., arXiv 2401.00153), for MONAI.

The package is organized as the paper flows: ``data`` (datalists, organ-balanced sampling, synthetic
ultrasound, dataset preparation) -> ``transforms`` (spatial-frequency dual masking) -> ``networks``
(BEiT encoder, MIM decoder, task heads, CycleGAN) -> ``losses`` / ``metrics`` -> ``engines`` /
``handlers`` (MONAI workflow pieces). Bundles in ``bundles/`` only configure these classes.
"""

__version__ = "0.1.0"
