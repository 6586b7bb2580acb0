"""The CPU tile rasterizer against the dense reference, gsplat's torch helpers, and gsplat CUDA."""

import numpy as np
import pytest
import torch

from conftest import DEMO_PLY
from hemgs.cameras import Camera, intrinsics, look_at, sample_views
from hemgs.device import resolve_device, set_threads
from hemgs.errors import InputError
from hemgs.io import load_scene
from hemgs.render import rasterize, render
from hemgs.render import project as proj
from hemgs.render.tiles import composite_tiles
from hemgs.scene import SH_C0

W, H = 46, 38  # not a multiple of any tile size: partial tiles are exercised


@pytest.fixture(scope="module")
def demo():
    return load_scene(DEMO_PLY)


@pytest.fixture(scope="module")
def crowd(demo):
    """2,000 real Gaussians nearest the scene centre: dense enough that pixels saturate."""
    lo, hi = np.percentile(demo.means, [1, 99], axis=0)
    d = np.linalg.norm(demo.means - (lo + hi) / 2 + np.array([0, 0.3, 0]), axis=1)
    return demo.subset(np.sort(np.argsort(d)[:2000]))


def _tensors(scene, dtype=torch.float32, grad=False):
    t = lambda a: torch.tensor(np.asarray(a), dtype=dtype)  # noqa: E731
    out = [t(scene.means), t(scene.quats), t(scene.log_scales).exp(), torch.sigmoid(t(scene.opacity_logits)),
           t(scene.sh)]
    return [x.requires_grad_(grad) for x in out]


def _cam(cam, dtype=torch.float32):
    return torch.tensor(cam.viewmat, dtype=dtype), torch.tensor(cam.K, dtype=dtype)


def _run(args, cam, backend, sh_degree=2, background=None):
    V, K = _cam(cam, args[0].dtype)
    return rasterize(*args, V, K, cam.width, cam.height, sh_degree=sh_degree, background=background,
                     backend=backend)


# ---- tiles vs dense ------------------------------------------------------------------------
def test_tiles_match_dense_on_real_gaussians(crowd):
    # Same math in float32, summed in a different order (chunked cumulative products against
    # one long product): measured differences are below 5e-7, so 2e-5 leaves room for other
    # CPUs/BLAS while still catching any wrong Gaussian, order or stop rule (those move pixels by
    # 1e-3 or more). A pixel whose transmittance lands within rounding of the 1e-4 stop
    # threshold could flip; none does on these views.
    args = _tensors(crowd)
    bg = torch.tensor([0.2, 0.5, 0.9])
    saturated = 0
    for cam in sample_views(crowd, n=3, width=W, height=H):
        img_t, a_t = _run(args, cam, "tiles", background=bg)
        img_d, a_d = _run(args, cam, "dense", background=bg)
        assert img_t.shape == (H, W, 3) and a_t.shape == (H, W, 1)
        assert (img_t - img_d).abs().max() < 2e-5
        assert (a_t - a_d).abs().max() < 2e-5
        assert a_d.max() > 0.9 and a_d.min() < 0.1  # a real picture: object and background
        saturated += int((a_d > 0.999).sum())
    assert saturated > 50  # the early-stop rule was exercised


def test_gradients_of_tiles_match_dense(crowd):
    cam = sample_views(crowd, n=2, width=W, height=H)[1]
    weight = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(0))
    grads = {}
    for backend in ("tiles", "dense"):
        args = _tensors(crowd, grad=True)
        img, alpha = _run(args, cam, backend, background=torch.tensor([0.1, 0.1, 0.1]))
        ((img * weight).sum() + alpha.sum()).backward()
        grads[backend] = [a.grad for a in args]
    for name, gt, gd in zip(("means", "quats", "scales", "opacities", "sh"), grads["tiles"], grads["dense"]):
        assert gd.abs().max() > 0, name
        assert (gt - gd).norm() / gd.norm() < 1e-4, name


def test_gradcheck_float64_tiny_scene():
    # Finite differences in float64 on 5 Gaussians: autograd through the tiles is exact.
    g = torch.Generator().manual_seed(3)
    n = 5
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 0.6
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = 0.08 + 0.1 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    opac = 0.3 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    w, h = 12, 10
    V = torch.tensor(look_at((0.1, -0.2, -2.0), (0, 0, 0), (0, -1, 0)))
    K = torch.tensor(intrinsics(40, w, h))

    def f(m, q, s, o, c):
        img, alpha = rasterize(m, q, s, o, c, V, K, w, h, background=torch.tensor([0.3, 0.2, 0.1],
                               dtype=torch.float64), backend="tiles")
        return img, alpha

    inputs = tuple(x.requires_grad_() for x in (means, quats, scales, opac, colors))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_tile_size_does_not_change_the_image(crowd):
    args = _tensors(crowd)
    cam = sample_views(crowd, n=1, width=W, height=H)[0]
    V, K = _cam(cam)
    p = proj.project(*args[:4], V, K, W, H)
    rgb = torch.rand(len(p.ids), 3, generator=torch.Generator().manual_seed(1))
    ref = composite_tiles(p.means2d, p.conics, p.opacities, rgb, p.depths, p.radii, W, H, tile_size=16)
    for ts, step in ((4, 1 << 12), (7, 1 << 16), (8, 1 << 18)):
        img, alpha = composite_tiles(p.means2d, p.conics, p.opacities, rgb, p.depths, p.radii, W, H,
                                     tile_size=ts, step_elements=step)
        assert (img - ref[0]).abs().max() < 2e-5 and (alpha - ref[1]).abs().max() < 2e-5


# ---- projection and SH against gsplat's own torch code -------------------------------------
def test_projection_matches_gsplat_torch_impl(crowd):
    gs = pytest.importorskip("gsplat.cuda._torch_impl")
    args = _tensors(crowd)
    for cam in sample_views(crowd, n=2, width=W, height=H):
        V, K = _cam(cam)
        covars = gs._quat_scale_to_covar_preci(args[1], args[2], compute_preci=False)[0]
        radii, means2d, depths, conics, _ = gs._fully_fused_projection(args[0], covars, V[None], K[None], W, H)
        ours = proj.project(*args[:4], V, K, W, H, opacity_aware=False)
        visible = (radii[0] > 0).all(-1).nonzero().squeeze(1)
        assert torch.equal(ours.ids, visible)
        assert torch.allclose(ours.means2d, means2d[0, visible], atol=1e-4)
        assert torch.allclose(ours.depths, depths[0, visible])
        assert torch.allclose(ours.conics, conics[0, visible], rtol=1e-3, atol=1e-3)
        assert torch.equal(ours.radii, radii[0, visible].int())
        # gsplat 1.5's CUDA kernel also shrinks the box by opacity; never grows it.
        aware = proj.project(*args[:4], V, K, W, H)
        assert len(aware.ids) <= len(ours.ids) and len(aware.ids) > 0.5 * len(ours.ids)


def test_fallbacks_match_gsplat_helpers():
    gs = pytest.importorskip("gsplat.cuda._torch_impl")
    g = torch.Generator().manual_seed(0)
    quats, scales = torch.randn(50, 4, generator=g), torch.rand(50, 3, generator=g) + 0.1
    ref = gs._quat_scale_to_covar_preci(quats, scales, compute_preci=False)[0]
    assert torch.allclose(proj.covariances_fallback(quats, scales), ref, atol=1e-6)
    dirs, coeffs = torch.randn(50, 3, generator=g), torch.randn(50, 16, 3, generator=g)
    for degree in range(4):
        ref = gs._spherical_harmonics(degree, dirs, coeffs)
        assert torch.allclose(proj.sh_eval_fallback(degree, dirs, coeffs), ref, atol=1e-5), degree


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_degrees_render_and_match_dense(crowd, degree):
    scene = crowd.with_sh_degree(degree)
    if degree == 3:  # the demo stops at degree 2: give band 3 real-looking values
        scene.sh[:, 9:] = np.random.default_rng(0).normal(0, 0.05, scene.sh[:, 9:].shape)
    args = _tensors(scene)
    cams = sample_views(scene, n=2, width=W, height=H)
    img_t, _ = _run(args, cams[0], "tiles", sh_degree=degree)
    img_d, _ = _run(args, cams[0], "dense", sh_degree=degree)
    assert (img_t - img_d).abs().max() < 2e-5
    if degree == 0:
        # SH degree 0 is the DC colour: the same as passing RGB = SH_C0 * dc + 0.5 (clamped at 0).
        rgb = torch.clamp_min(args[4][:, 0] * SH_C0 + 0.5, 0.0)
        img_rgb, _ = _run(args[:4] + [rgb], cams[0], "tiles", sh_degree=None)
        assert (img_rgb - img_t).abs().max() < 1e-5
    else:
        # Higher bands change the colour; dropping them must change the picture.
        img_0, _ = _run(args[:4] + [args[4][:, :1]], cams[0], "tiles", sh_degree=0)
        assert (img_0 - img_t).abs().max() > 1e-3


# ---- edge cases ----------------------------------------------------------------------------
def test_background_fills_what_the_gaussians_leave(crowd):
    args = _tensors(crowd)
    cam = sample_views(crowd, n=1, width=W, height=H)[0]
    bg = torch.tensor([0.25, 0.5, 1.0])
    black, alpha = _run(args, cam, "tiles")
    coloured, alpha2 = _run(args, cam, "tiles", background=bg)
    assert torch.equal(alpha, alpha2)
    assert torch.allclose(coloured, black + (1 - alpha) * bg, atol=1e-6)


def test_empty_scene_and_everything_culled_give_the_background():
    bg = torch.tensor([0.1, 0.7, 0.3])
    cam = Camera(look_at((0, 0, -3), (0, 0, 0), (0, -1, 0)), intrinsics(50, W, H), W, H)
    V, K = _cam(cam)
    empty = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3)]
    behind = [torch.tensor([[0.0, 0.0, -5.0], [0.0, 0.0, -3.0]]), torch.tensor([[1.0, 0, 0, 0]] * 2),
              torch.full((2, 3), 0.2), torch.tensor([0.9, 0.9]), torch.ones(2, 3)]
    off_screen = [torch.tensor([[50.0, 0.0, 0.0]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.05),
                  torch.tensor([0.9]), torch.ones(1, 3)]
    for args in (empty, behind, off_screen):
        for backend in ("tiles", "dense"):
            img, alpha = rasterize(*args, V, K, W, H, background=bg, backend=backend)
            assert torch.allclose(img, bg.expand(H, W, 3)) and float(alpha.abs().max()) == 0.0
        if torch.cuda.is_available():  # gsplat once died of a floating point exception on zero Gaussians
            img, alpha = rasterize(*[a.cuda() for a in (*args, V, K)], W, H, background=bg.cuda(), backend="gsplat")
            assert torch.allclose(img.cpu(), bg.expand(H, W, 3)) and float(alpha.abs().max()) == 0.0


def test_camera_inside_the_scene(crowd):
    args = _tensors(crowd)
    lo, hi = crowd.bounds()
    c = (lo + hi) / 2
    cam = Camera(look_at(c, c + np.array([0.3, 0.1, 1.0]), (0, -1, 0)), intrinsics(70, W, H), W, H)
    img_t, a_t = _run(args, cam, "tiles")
    img_d, a_d = _run(args, cam, "dense")
    assert torch.isfinite(img_t).all() and a_t.max() > 0.5
    assert (img_t - img_d).abs().max() < 2e-5


def test_bad_arguments_raise_input_error(crowd):
    args = _tensors(crowd)
    cam = sample_views(crowd, n=1, width=W, height=H)[0]
    V, K = _cam(cam)
    with pytest.raises(InputError, match="backend"):
        rasterize(*args, V, K, W, H, sh_degree=2, backend="opengl")
    with pytest.raises(InputError, match="colors"):
        rasterize(*args[:4], args[4][:, :4], V, K, W, H, sh_degree=2)
    with pytest.raises(InputError, match="quats"):
        rasterize(args[0], args[1][:, :3], *args[2:], V, K, W, H, sh_degree=2)
    with pytest.raises(InputError, match="CUDA"):  # CPU tensors
        rasterize(*args, V, K, W, H, sh_degree=2, backend="gsplat")


# ---- convenience API, devices --------------------------------------------------------------
def test_render_scene_gives_a_float_image(demo):
    cam = sample_views(demo, n=1, width=40, height=30)[0]
    img = render(demo, cam, device="cpu")
    assert img.dtype == np.float32 and img.shape == (30, 40, 3)
    assert img.min() >= 0 and img.max() <= 1 and img.max() > 0.5
    white = render(demo, cam, device="cpu", background=(1, 1, 1))
    assert white[0, 0].min() > 0.99  # the corner is empty: background shows


def test_devices_and_threads(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("HEMGS_THREADS", "1")
        assert set_threads() == 1
        assert set_threads(2) == 2  # an explicit count wins over the variable
        monkeypatch.setenv("HEMGS_THREADS", "many")
        with pytest.raises(InputError, match="HEMGS_THREADS"):
            set_threads()
        with pytest.raises(InputError, match="at least 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's CUDA rasterizer needs a GPU")
def test_tiles_match_gsplat_cuda(crowd):
    # gsplat uses __expf and fused multiply-adds; we expect agreement to ~1e-3 per pixel.
    args = _tensors(crowd)
    cuda_args = [a.cuda() for a in args]
    for cam in sample_views(crowd, n=3, width=W, height=H):
        V, K = _cam(cam)
        img_t, a_t = rasterize(*args, V, K, W, H, sh_degree=2, backend="tiles")
        img_g, a_g = rasterize(*cuda_args, V.cuda(), K.cuda(), W, H, sh_degree=2, backend="gsplat")
        assert (img_t - img_g.cpu()).abs().max() < 2e-3
        assert (a_t - a_g.cpu()).abs().max() < 2e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's CUDA rasterizer needs a GPU")
def test_render_on_cuda_matches_cpu_with_background(crowd):
    # `render` always passes a background; gsplat's packed mode once refused it (found on an H100).
    for cam in sample_views(crowd, n=2, width=W, height=H):
        cpu = render(crowd, cam, device="cpu", background=(0.2, 0.4, 0.9))
        gpu = render(crowd, cam, device="cuda", background=(0.2, 0.4, 0.9))
        assert np.abs(cpu - gpu).max() < 2e-3
        assert np.abs(gpu - render(crowd, cam, device="cuda")).max() > 0.1  # the background shows
