"""Seconds to read each bundle's default config as MONAI's tools do, and whether reading it wrote data.

``ConfigWorkflow(...).initialize()`` + ``check_properties()`` is what the model zoo's CI, MONAI Label and a user's
``monai.bundle verify`` run on a bundle. It builds the datasets, samplers and loaders, so a dataset that reads or
generates its images when it is built makes every check pay for it. Run from the repository root::

    python benchmarks/bench_check_properties.py            # every bundle, train.json and inference.json
    python benchmarks/bench_check_properties.py --bundles pretrain_usfm --workflows train
    PYTHONPATH=/tmp/before python benchmarks/bench_check_properties.py --repo /tmp/before   # an older checkout

Each check runs in a fresh temporary bundle root (nothing cached) and reports the data files written under it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = ("pretrain_usfm", "seg_tn3k", "cls_busi", "enhance_usenhance")
CONFIGS = {"train": "train.json", "infer": "inference.json"}


def check_properties_seconds(bundle: str, workflow_type: str, repo: str = REPO) -> tuple[float, int]:
    """Seconds of ``initialize()`` + ``check_properties()`` of ``bundle``'s default config, and the number of data
    files (the synthetic default dataset) it wrote."""
    import torch
    from monai.bundle import ConfigWorkflow

    configs = os.path.join(repo, "bundles", bundle, "configs")
    root = tempfile.mkdtemp(prefix=f"check_{bundle}_")
    try:
        shutil.copytree(configs, os.path.join(root, "configs"))
        overrides = {}
        if bundle == "enhance_usenhance" and workflow_type == "train":
            # the frozen USFM branch loads its encoder when the network is built: give it one (not timed)
            from usfm_monai.networks import create_usfm_encoder, export_encoder

            torch.manual_seed(0)
            overrides["usfm_weights"] = export_encoder(
                create_usfm_encoder("base", img_size=224, in_chans=1, use_fc_norm=False),
                os.path.join(root, "usfm_encoder.pt"),
            )
        start = time.perf_counter()
        workflow = ConfigWorkflow(
            config_file=os.path.join(root, "configs", CONFIGS[workflow_type]),
            meta_file=os.path.join(root, "configs", "metadata.json"), workflow_type=workflow_type, bundle_root=root,
            **overrides,
        )
        workflow.initialize()
        missing = workflow.check_properties()
        seconds = time.perf_counter() - start
        if missing:
            raise RuntimeError(f"{bundle} {workflow_type}: check_properties reports {missing}")
        written = sum(len(names) for _, _, names in os.walk(os.path.join(root, "data")))
        workflow.finalize()
        return seconds, written
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=BUNDLES)
    parser.add_argument("--workflows", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repo", default=REPO, help="the checkout whose bundles are read (put its package first on "
                        "PYTHONPATH to measure an older version)")
    args = parser.parse_args(argv)
    print(f"{'bundle':<18} {'config':<15} {'seconds':>8} {'data files':>11}")
    for bundle in args.bundles:
        for workflow_type in args.workflows:
            seconds, written = check_properties_seconds(bundle, workflow_type, args.repo)
            print(f"{bundle:<18} {CONFIGS[workflow_type]:<15} {seconds:>8.1f} {written:>11}", flush=True)


if __name__ == "__main__":
    main()
