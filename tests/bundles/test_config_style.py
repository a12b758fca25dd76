"""Config lint: the bundles' configs read like the model zoo's (spleen_ct_segmentation) — short expressions,
one spelling per component, the shared ids that baselines and tests override."""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "bundles", "*", "configs", "*.json")))
BUNDLES = sorted({os.path.basename(os.path.dirname(os.path.dirname(f))) for f in CONFIGS})
MAX_EXPRESSION = 100


def _walk(node, path=""):
    """Yield ``(id, value)`` of every leaf, with MONAI's ``#``-joined ids."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}#{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}#{i}")
    else:
        yield path, node


def _load(bundle, name):
    with open(os.path.join(REPO, "bundles", bundle, "configs", name)) as fh:
        return json.load(fh)


def test_there_are_configs_to_check():
    assert len(BUNDLES) == 4 and len(CONFIGS) >= 30


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_expressions_are_short(path):
    with open(path) as fh:
        config = json.load(fh)
    long = [
        (key, len(value))
        for key, value in _walk(config)
        if isinstance(value, str) and value.startswith("$") and not key.startswith("imports")
        and len(value) > MAX_EXPRESSION
    ]
    # a longer call reads better as a `_target_` component; a longer computation belongs in the package
    assert not long, f"{os.path.relpath(path, REPO)}: `$` expressions over {MAX_EXPRESSION} characters: {long}"


def test_one_spelling_per_target():
    spellings = defaultdict(set)
    for path in CONFIGS:
        with open(path) as fh:
            for key, value in _walk(json.load(fh)):
                if key.endswith("_target_") and isinstance(value, str):
                    spellings[value.rsplit(".", 1)[-1]].add(value)
    assert {name: s for name, s in spellings.items() if len(s) > 1} == {}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_shared_ids(bundle):
    train = _load(bundle, "train.json")
    # the synthetic default is configured in one place, so a test or a user changes one id
    assert isinstance(train.get("synthetic_kwargs"), dict), bundle
    if bundle != "enhance_usenhance":  # CycleGAN: two optimizers over different networks, no layer groups
        assert train["optimizer"]["params"] == "@param_groups", bundle
        assert train["param_groups"]["_target_"] == "usfm_monai.optim.layer_decay_param_groups"
    # validation reuses the training's deterministic transforms instead of repeating them
    transforms = train["validate"]["preprocessing"]["transforms"]
    assert transforms == "%train#deterministic_transforms" or transforms.startswith("$@train#deterministic_transforms")
