"""Entropy refinement (hemgs.entropy.refine): trained on frozen symbols, it lowers their rate and
leaves every coded value as it was (the file decodes to the same anchors before and after); its
record travels with the model file; fixed_symbols_* code what the codec codes."""

import pytest
import torch

from conftest import DEMO_PLY
from hemgs.anchor.warm_start import build_anchor_model, warm_start
from hemgs.codec import anchor as hac_codec
from hemgs.codec import hemgs_codec
from hemgs.codec.weights import NETWORK_BITS
from hemgs.entropy.refine import fixed_symbols_hac, fixed_symbols_hemgs, refine_entropy
from hemgs.errors import InputError
from hemgs.fit import FEATURE_STD, REFINE_PER_STEP, FitConfig, entropy_lambdas, new_entropy_model, rescale_features, scene_agnostic_prior
from hemgs.io import load_scene
from hemgs.model_store import load_model, save_model

CHUNK = 256
# One depth of the file's entropy networks: the encoder's search over depths may pick another for
# another model, and the steps, which these networks predict, with it.
BITS = {"chunk": CHUNK, "network_bits": NETWORK_BITS}


@pytest.fixture(scope="module")
def anchor_model():
    """~750 anchors of the demo scene, warm-started briefly, features rescaled as `fit` does."""
    scene = load_scene(DEMO_PLY).subset(slice(0, 3000))
    model = build_anchor_model(scene, seed=0)
    warm_start(model, scene, steps=10, seed=0)
    rescale_features(model, FEATURE_STD)
    return model


def _same_anchors(a, b) -> bool:
    x, y = a.model.anchor_attributes(), b.model.anchor_attributes()
    return all(torch.equal(x[k], y[k]) for k in x)


def test_hac_refinement_lowers_the_rate_and_codes_the_same_values(anchor_model, tmp_path):
    cfg = FitConfig(codec="hac", lam=2e-3, refine_steps=75)
    entropy = new_entropy_model(anchor_model, cfg, seed=1)
    _, before_sections, before = hac_codec.encode(anchor_model, entropy, lam=cfg.lam, **BITS)
    step_rows = entropy.mlp[2].weight.detach()[-3:].clone()
    info = refine_entropy(anchor_model, entropy, lambdas=entropy_lambdas(entropy, cfg), steps=cfg.refine_steps)
    assert torch.equal(entropy.mlp[2].weight.detach()[-3:], step_rows)  # the step outputs never move
    # an untrained head: the exact rate of the frozen symbols falls by far more than noise
    assert info["bits_after"] < 0.9 * info["bits_before"], info
    assert 0 < info["steps"] <= cfg.refine_steps and info["budget"] == cfg.refine_steps
    _, after_sections, after = hac_codec.encode(anchor_model, entropy, lam=cfg.lam, **BITS)
    assert _same_anchors(before, after)
    streams = ("features", "scaling", "offsets")
    assert sum(len(after_sections[s]) for s in streams) < sum(len(before_sections[s]) for s in streams)
    # the record goes into the model file and comes back
    save_model(tmp_path / "m.safetensors", anchor_model, entropy, lam=cfg.lam)
    _, loaded, meta = load_model(tmp_path / "m.safetensors")
    assert meta["refine"]["budget"] == cfg.refine_steps and loaded.refinement == meta["refine"]


def test_hemgs_refinement_keeps_every_lambda_s_values(anchor_model):
    """A variable-rate model: the refinement trains on the symbols of its K λ at once; at each of
    them (and between them) the file decodes to the same anchors as before."""
    cfg = FitConfig(refine_steps=50)
    entropy = new_entropy_model(anchor_model, cfg, seed=1)
    sa = scene_agnostic_prior()
    lams = (1e-3, 2.5e-3)
    before = [hemgs_codec.encode(anchor_model, entropy, sa, lam=lam, **BITS)[2] for lam in lams]
    frozen = {k: v.clone() for k, v in entropy.state_dict().items() if not k.startswith("head.")}
    info = refine_entropy(anchor_model, entropy, lambdas=entropy_lambdas(entropy, cfg), steps=cfg.refine_steps,
                          sa_feat=sa.features(anchor_model.coords.numpy()))
    assert info["bits_after"] < 0.9 * info["bits_before"], info
    state = entropy.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # grid, priors, step predictor
    for lam, b in zip(lams, before):
        assert _same_anchors(b, hemgs_codec.encode(anchor_model, entropy, sa, lam=lam, **BITS)[2])


@pytest.mark.parametrize("codec", ["hac", "hemgs"])
def test_fixed_symbols_are_what_the_file_decodes_to(anchor_model, codec):
    """The symbols the refinement trains on are the decoded file's values, element for element
    (the codec's networks are rounded apart from ours: a handful may sit on a step boundary)."""
    entropy = new_entropy_model(anchor_model, FitConfig(codec=codec), seed=1)
    if codec == "hac":
        fixed, _ = fixed_symbols_hac(anchor_model, entropy)
        decoded = hac_codec.encode(anchor_model, entropy, lam=1e-3, **BITS)[2]
    else:
        sa = scene_agnostic_prior()
        fixed, _ = fixed_symbols_hemgs(anchor_model, entropy, 2e-3, sa.features(anchor_model.coords.numpy()))
        decoded = hemgs_codec.encode(anchor_model, entropy, sa, lam=2e-3, **BITS)[2]
    # the file's anchors come in the location coder's order: match them by coordinates
    order = {tuple(c): i for i, c in enumerate(decoded.model.coords.tolist())}
    rows = torch.tensor([order[tuple(c)] for c in anchor_model.coords.tolist()])
    got = decoded.model.anchor_attributes()
    n = rows.numel()
    files = {"features": got["features"][rows], "scaling": got["scaling"][rows],
             "offsets": got["offsets"][rows].reshape(n, -1) * got["mask"][rows].repeat_interleave(3, 1)}
    for part, fp in fixed.items():
        same = (fp.values.float() == files[part]) | ~fp.coded
        assert same.float().mean() > 0.99, (part, same.float().mean())


def test_refine_budget_is_a_checked_config_field():
    assert FitConfig().refine_budget == REFINE_PER_STEP * FitConfig().steps > 0
    assert FitConfig(steps=10, refine_steps=7).refine_budget == 7
    with pytest.raises(InputError):
        FitConfig(refine_steps=-1).validate()
