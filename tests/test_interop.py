"""Models from diffusers and k-diffusion as scoresde scores (scoresde.interop): with the same network, the same
initial noise and the same per-step noise, scoresde's samplers reproduce the peers' own sampling loops.

The diffusers network is a tiny randomly initialised UNet2DModel, saved with save_pretrained and loaded back by
from_diffusers in float64, so that what is compared is conventions, not float32 round-off; the peers keep their
schedule tables (and DPM-Solver its step) in float32, hence the tolerance 1e-5 (measured: about 1e-7).
Conventions aligned, each where it is set:

* clip_sample=False: scoresde's samplers never clip x0 (a data-range heuristic, not part of a score).
* grid: scoresde walks the scheduler's own timesteps k at t = (k + 1) / N (interop.grid_from_timesteps), and its
  final Tweedie evaluation at the last timestep is the peers' last step, which goes to alpha_bar = 1 and so returns
  their x0 prediction (DDPM: prev_t = -1; DDIM: set_alpha_to_one=True; DPM-Solver: final_sigmas_type "zero").
* noise: the k-th draw of scoresde's `noise(k, x)` is the draw of the peer's k-th step (DDPM draws from the
  generator it is given, DDIM takes variance_noise).
"""

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import toy_data
from scoresde import VE, VP, guidance, interop, schedules
from scoresde.cli import main
from scoresde.evaluation import compare_images, images, sample_model, save_images
from scoresde.evaluation.digits import DigitsClassifier
from scoresde.processes import EDM
from scoresde.samplers import ancestral, ddim, dpm_solver_pp, dpm_solver_pp_sde, euler, heun

from .conftest import DEVICE

diffusers = pytest.importorskip("diffusers")
# DPMSolverMultistepScheduler.set_timesteps calls np.array on a tensor (diffusers 0.42 with numpy 2)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPE = (2, 1, 8, 8)
N = 1000
STEPS = 5  # divides N: DDIM steps by the fixed stride N // steps whatever its timesteps are
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
CASES = [(s, p) for s in SCHEDULES for p in ("epsilon", "v_prediction")] + [("linear", "sample")]
TOL = 1e-5


def _unet(**kw) -> "diffusers.UNet2DModel":
    """One resolution level, 8 channels, no attention: 6 ms per evaluation on one CPU core."""
    kw = {"sample_size": 8, "in_channels": 1, "out_channels": 1, **kw}
    return diffusers.UNet2DModel(block_out_channels=(8,), layers_per_block=1, down_block_types=("DownBlock2D",),
                                 up_block_types=("UpBlock2D",), norm_num_groups=4, add_attention=False, **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Pipeline-layout folders (unet/, scheduler/): pipe, and cond (a class-conditional UNet, 4 class embeddings)."""
    root = tmp_path_factory.mktemp("diffusers")
    torch.manual_seed(0)
    for name, unet in (("pipe", _unet()), ("cond", _unet(num_class_embeds=4))):
        unet.save_pretrained(root / name / "unet")
        diffusers.DDPMScheduler(num_train_timesteps=N).save_pretrained(root / name / "scheduler")
    return root


@pytest.fixture(scope="module")
def net(saved):
    model = interop.from_diffusers(saved / "pipe", device=DEVICE, dtype=torch.float64)
    assert next(model.net.parameters()).dtype == torch.float64 and model.event_shape == SHAPE[1:]
    return model.net


def _noise(n: int, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64).to(DEVICE) for _ in range(n)]


def _x_T() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def _peer_loop(sched, eps_model, x, **step_kw) -> torch.Tensor:
    """diffusers' loop: x <- scheduler.step(model(x, k), k, x) over the scheduler's timesteps."""
    for i, k in enumerate(sched.timesteps):
        kw = {key: (v[i] if isinstance(v, list) else v) for key, v in step_kw.items()}
        x = sched.step(eps_model(x, k), k, x, return_dict=False, **kw)[0]
    return x


def _scheduler(cls, schedule, prediction, steps=STEPS, **kw):
    """The cosine schedule's alpha_bar at k = 999 is 2.4e-9: a random eps-network's x0 = (x - sigma eps) / alpha
    is then ~1e4 and swamps every later step (a wrong later step would go unseen), so that case starts at k = 800
    ('leading' spacing; DPM-Solver's leading: 830)."""
    kw = {"num_train_timesteps": N, "beta_schedule": schedule, "prediction_type": prediction, **kw}
    if (schedule, prediction) == ("squaredcos_cap_v2", "epsilon"):
        kw["timestep_spacing"] = "leading"
    sched = getattr(diffusers, cls)(**kw)
    sched.set_timesteps(steps)
    return sched


def _ours(net, sched, sampler, **kw) -> torch.Tensor:
    model = interop.from_diffusers(net, sched)
    ts = interop.grid_from_timesteps(model.process, sched.timesteps)
    with torch.no_grad():
        return sampler(model.score_fn(), model.process, _x_T(), ts, **kw)


def _plain(net):
    return lambda x, k: net(x, k, return_dict=False)[0]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_process_is_the_schedulers_table_at_timestep_plus_one(schedule):
    """diffusers' timestep k is DDPM step k + 1: alphas_cumprod[k] = alpha((k + 1) / N)², and add_noise is perturb."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=N, beta_schedule=schedule)
    process, prediction = interop.process_from_scheduler(sched)
    assert prediction == "eps" and process.N == N
    t = (torch.arange(N, dtype=torch.float64) + 1) / N
    table = sched.alphas_cumprod.double()
    assert torch.allclose(process.alpha(t) ** 2, table, rtol=1e-12, atol=0)
    assert torch.equal(interop.timestep_of(process, t.float()), torch.arange(N, dtype=torch.float64))  # float32 t
    x0, eps = torch.randn(2, N, 3, dtype=torch.float64)
    k = torch.arange(N)
    ours = process.perturb(x0, t, eps)
    assert _rel(ours, sched.add_noise(x0, eps, k)) < 1e-6  # diffusers takes the square roots in float32
    assert _rel(ours, sched.add_noise(x0, eps, k - 1)) > 1e-4  # one step off is visible


@pytest.mark.parametrize("schedule,prediction", CASES)
def test_ancestral_is_the_ddpm_scheduler(net, schedule, prediction):
    """DDPM's "fixed_small" variance is the posterior variance between the two timesteps, as in ancestral."""
    sched = _scheduler("DDPMScheduler", schedule, prediction, clip_sample=False, timestep_spacing="trailing",
                       variance_type="fixed_small")
    z = _noise(STEPS)
    ours = _ours(net, sched, ancestral, noise=lambda k, x: z[k])
    # DDPM draws its noise from the generator (also at its last step, with std 1e-10): the same draws as z
    peer = _peer_loop(sched, _plain(net), _x_T(), generator=torch.Generator().manual_seed(1))
    assert _rel(ours, peer) < TOL


def test_ancestral_is_the_full_ddpm_chain(net):
    """All N steps (a 10-step DDPM, default 'leading' spacing): the grid is schedules.ddpm_steps(process, N - 1)."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=10, clip_sample=False)
    sched.set_timesteps(10)
    model = interop.from_diffusers(net, sched)
    ts = schedules.ddpm_steps(model.process, 9)
    assert torch.equal(ts, interop.grid_from_timesteps(model.process, sched.timesteps))
    z = _noise(9)
    with torch.no_grad():
        ours = ancestral(model.score_fn(), model.process, _x_T(), ts, noise=lambda k, x: z[k])
    peer = _peer_loop(sched, _plain(net), _x_T(), generator=torch.Generator().manual_seed(1))
    assert _rel(ours, peer) < TOL


@pytest.mark.parametrize("schedule,prediction", CASES)
def test_ddim_is_the_ddim_scheduler(net, schedule, prediction):
    """eta = 0 on 'trailing' timesteps; eta = 1 on 'leading' ones (999 .. 199, then 800 .. 0). With eta = 1 and
    the cosine schedule, diffusers' own float32 sqrt(1 - alpha_bar_prev - std²) is NaN at its first timestep 999
    (alpha_bar = 2.4e-9, so std² rounds above 1 - alpha_bar_prev), which 'leading' spacing avoids."""
    for eta, spacing in ((0.0, "trailing"), (1.0, "leading")):
        sched = _scheduler("DDIMScheduler", schedule, prediction, clip_sample=False, set_alpha_to_one=True,
                           timestep_spacing=spacing)
        z = _noise(STEPS)
        ours = _ours(net, sched, ddim, eta=eta, noise=lambda k, x: z[k])
        peer = _peer_loop(sched, _plain(net), _x_T(), eta=eta, variance_noise=z)
        assert _rel(ours, peer) < TOL, (eta, spacing)


@pytest.mark.parametrize("schedule,prediction", CASES)
def test_dpm_solver_pp_is_the_multistep_scheduler(net, schedule, prediction):
    """DPM-Solver++(2M) on the same timesteps ('linspace' spacing). diffusers' last step goes to sigma = 0
    (first order there: it returns x0, our Tweedie step); its step before that stays second order, which is
    scoresde's lower_order_final=False (our True makes that step first order: a documented option, not a bug)."""
    sched = _scheduler("DPMSolverMultistepScheduler", schedule, prediction, algorithm_type="dpmsolver++",
                       solver_order=2, final_sigmas_type="zero")
    ours = _ours(net, sched, dpm_solver_pp, lower_order_final=False)
    peer = _peer_loop(sched, _plain(net), _x_T())
    assert _rel(ours, peer) < TOL
    if (schedule, prediction) == ("linear", "epsilon"):  # the option is visible
        assert _rel(_ours(net, sched, dpm_solver_pp, lower_order_final=True), peer) > 1e-4


def test_class_labels_null_label_and_cfg(saved):
    """labels reach the UNet's class embedding; labels=None is the configured null label; CFG on scores is CFG on
    eps (score = -eps / sigma at a fixed t), so guided DDIM equals diffusers' loop with guided eps."""
    model = interop.from_diffusers(saved / "cond", null_label=3, device=DEVICE, dtype=torch.float64)
    assert model.num_classes == 3 and model.null_label == 3
    net, labels, w = model.net, torch.tensor([0, 2], device=DEVICE), 3.0

    def cond(x, k):
        return net(x, k, class_labels=labels, return_dict=False)[0]

    def guided(x, k):
        uncond = net(x, k, class_labels=torch.full_like(labels, 3), return_dict=False)[0]
        return uncond + w * (cond(x, k) - uncond)

    sched = _scheduler("DDIMScheduler", "linear", "epsilon", clip_sample=False, set_alpha_to_one=True,
                       timestep_spacing="trailing")
    ts = interop.grid_from_timesteps(model.process, sched.timesteps)
    with torch.no_grad():
        ours = ddim(model.score_fn(labels), model.process, _x_T(), ts)
        cfg = guidance.classifier_free(model.score_fn(labels), model.score_fn(None), w)
        ours_cfg = ddim(cfg, model.process, _x_T(), ts)
        other = ddim(model.score_fn(1), model.process, _x_T(), ts)
    assert _rel(ours, _peer_loop(sched, cond, _x_T())) < TOL
    assert _rel(ours_cfg, _peer_loop(sched, guided, _x_T())) < TOL
    assert _rel(other, ours) > 1e-3  # the labels matter


def test_loading_and_bad_input(saved, net):
    folder = interop.from_diffusers(saved / "pipe" / "unet", saved / "pipe" / "scheduler")
    assert torch.equal(folder.process.betas, interop.process_from_scheduler(diffusers.DDPMScheduler(N))[0].betas)
    assert all(torch.equal(a.double(), b.cpu()) for a, b in zip(folder.net.parameters(), net.parameters()))
    cond = interop.from_diffusers(saved / "cond" / "unet", saved / "pipe")
    bad = {
        "not a local folder": lambda: interop.from_diffusers("google/ddpm-cifar10-32"),
        "no scheduler/": lambda: interop.from_diffusers(saved / "pipe" / "unet"),
        "zero terminal SNR": lambda: interop.from_diffusers(net, diffusers.DDPMScheduler(rescale_betas_zero_snr=True)),
        "give labels": lambda: cond.score_fn(),
        "outside": lambda: cond.score_fn(4),
        "unconditional": lambda: folder.score_fn(0),
        "null_label": lambda: interop.from_diffusers(net, saved / "pipe", null_label=0),
    }
    for match, call in bad.items():
        with pytest.raises(ValueError, match=match):
            call()
    text_model = saved / "text"
    text_model.mkdir()
    (text_model / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="UNet2DConditionModel.*supported: UNet2DModel"):
        interop.from_diffusers(text_model, saved / "pipe")


def test_cli_sample_and_compare_a_diffusers_folder(saved, tmp_path, capsys, monkeypatch):
    """`scoresde sample --diffusers` gives the API's samples; `compare --diffusers` on a digits-shaped model
    measures every run with the digits classifier (an untrained one here: the wiring, not the numbers)."""
    pipe = str(saved / "pipe")
    assert main(["sample", "--diffusers", pipe, "--sampler", "ddim", "--nfe", "4", "--n", "3",
                 "--out", str(tmp_path / "s.png")]) == 0
    expected = sample_model(interop.from_diffusers(pipe), 3, sampler="ddim", nfe=4, seed=0)
    assert torch.equal(torch.load(tmp_path / "s.pt"), expected)
    assert main(["sample", "--diffusers", str(saved / "cond"), "--null-label", "3", "--guidance", "cfg", "--label",
                 "1", "--w", "2", "--nfe", "3", "--n", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert torch.load(tmp_path / "g.pt").shape == (2, 1, 8, 8)

    monkeypatch.setattr(images, "load_digits_classifier", lambda device=None: DigitsClassifier().eval())
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", "--diffusers", pipe, "--samplers", "ddim,annealed_langevin", "--nfe", "3,5", "--n", "4",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "FD" in text  # every sampler's budget plan fits NFE 3 now (annealed_langevin: 1 level x 1 step + 1)
    records = json.loads((out / "results.json").read_text())["records"]
    assert [(r["sampler"], r["nfe"]) for r in records if r["sampler"] == "ddim"] == [("ddim", 3), ("ddim", 5)]
    assert {r["sampler"] for r in records} == {"ddim", "annealed_langevin"} and all(r["nfe"] <= 5 for r in records)
    assert all(r["fd"] > 0 and r["seconds_per_image"] > 0 for r in records)
    assert (out / "samples_ddim.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "fd_vs_nfe.png").read_bytes()[:4] == b"\x89PNG"  # FD against NFE, one line per sampler
    for argv, needle in [(["sample", "--diffusers", "hub/model"], "not a local folder"),
                         (["sample", "--checkpoint", "x", "--diffusers", pipe], "not allowed with"),
                         (["compare", "--diffusers", pipe, "--grid", "karras", "--out", str(out)], "point models"),
                         (["sample", "--diffusers", pipe, "--no-ema"], "--no-ema")]:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and needle in err[-1] and "Traceback" not in "".join(err), argv


def test_compare_images_measures_nfe_and_time_on_any_image_model(saved, tmp_path):
    torch.manual_seed(1)
    model = interop.from_diffusers(_unet(in_channels=3, out_channels=3, sample_size=4),
                                   diffusers.DDPMScheduler(num_train_timesteps=N))
    result = compare_images(model, ["ddim", "heun"], [3, 16], n=2)
    assert [(r["sampler"], r["budget"], r["nfe"]) for r in result.records] == \
        [("ddim", 3, 3), ("ddim", 16, 16), ("heun", 16, 16)]
    assert len(result.skipped) == 1 and result.skipped[0].startswith("heun at NFE 3: heun needs NFE >= 15")
    assert all(r["seconds_per_image"] > 0 and "fd" not in r for r in result.records)
    assert result.samples["heun", 16].shape == (2, 3, 4, 4)
    written = save_images(result, tmp_path)
    assert [p.name for p in written] == ["results.json", "samples_ddim.png", "samples_heun.png"]
    with pytest.raises(ValueError, match="image models"):
        compare_images(type("Points", (), {"event_shape": (2,)})(), ["ddim"], [3])


# -- EDM and k-diffusion ------------------------------------------------------------------------------------------
def _ring8_denoiser():
    """An EDM denoiser D(x, sigma) = E[x0 | x0 + sigma eps = x] for ring8, exact (Gaussian conditioning, computed
    through a VE process: nothing of EDM or interop in it)."""
    mixture, ve = toy_data.load("ring8"), VE(0.002, 80.0)
    return mixture, lambda x, sigma: mixture.posterior_mean(x, ve, ve.t_from_log_snr(-2 * sigma.log()))


def test_from_edm_gives_the_exact_score():
    mixture, denoiser = _ring8_denoiser()
    score, process = interop.from_edm(denoiser, 0.002, 80.0)
    assert process.config() == {"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0}
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(64, 2, generator=g, dtype=torch.float64)).to(DEVICE)
    t = (0.01 + 5 * torch.rand(64, generator=g, dtype=torch.float64)).to(DEVICE)
    assert _rel(score(x, t), mixture.score(x, process, t)) < 1e-10

    class Wrapped:  # k-diffusion's wrappers of discrete models carry their sigma range
        sigma_min, sigma_max = torch.tensor(0.03, dtype=torch.float64), torch.tensor(14.6, dtype=torch.float64)

        def __call__(self, x, sigma):
            return denoiser(x, sigma)

    assert interop.from_k_diffusion(Wrapped())[1].config() == EDM(0.03, 14.6).config()
    with pytest.raises(ValueError, match="sigma_min"):
        interop.from_k_diffusion(denoiser)


def _k_sampling():
    """k_diffusion/sampling.py: the package's __init__ needs skimage, clip, wandb ... (k-diffusion is installed
    with --no-deps); sampling.py itself needs torch, scipy, torchdiffeq, torchsde, tqdm and utils.append_dims."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed")
    pytest.importorskip("torchsde")
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        pass
    utils = types.ModuleType("_k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    package = types.ModuleType("_k_diffusion")
    package.__path__, package.utils = [], utils
    sys.modules.update({"_k_diffusion": package, "_k_diffusion.utils": utils})
    path = Path(spec.submodule_search_locations[0]) / "sampling.py"
    module_spec = importlib.util.spec_from_file_location("_k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("steps", [5, 12])
def test_edm_samplers_are_k_diffusions(steps):
    """heun, euler and dpm_solver_pp (lower_order_final=False) on the Karras grid ts equal k-diffusion's
    sample_heun, sample_euler and sample_dpmpp_2m on sigmas = ts + [0]: k-diffusion's last step, to sigma = 0, is
    Euler, x + (x - D) / sigma_min (0 - sigma_min) = D(x, sigma_min), which is our final Tweedie step at sigma_min.
    Churn: k-diffusion divides s_churn by its number of steps, the step to 0 included (ours: by len(ts) - 1) and
    draws a normal at every step, churned or not (our noise(i, x) is indexed by step, so the draws line up)."""
    ks = _k_sampling()
    _, denoiser = _ring8_denoiser()
    score, process = interop.from_edm(denoiser, 0.002, 80.0)
    ts = schedules.karras(process, steps)
    sigmas = torch.cat([ts, ts.new_zeros(1)]).to(DEVICE)
    x = 80 * torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(DEVICE)
    pairs = [(heun, ks.sample_heun, {}), (euler, ks.sample_euler, {}),
             (dpm_solver_pp, ks.sample_dpmpp_2m, {"lower_order_final": False})]
    for ours, theirs, options in pairs:
        assert _rel(ours(score, process, x, ts, **options), theirs(denoiser, x, sigmas, disable=True)) < 1e-12
    churn = {"s_tmin": 0.01, "s_tmax": 40.0}  # without the last level (ours: Tweedie) and the first (ours: clamped)
    g = torch.Generator(DEVICE).manual_seed(9)
    z = [torch.randn(x.shape, generator=g, device=DEVICE, dtype=torch.float64) for _ in range(steps + 1)]
    ours = heun(score, process, x, ts, s_churn=2.0, noise=lambda i, y: z[i], **churn)
    with torch.random.fork_rng(devices=[DEVICE] if DEVICE.type == "cuda" else []):
        torch.manual_seed(9)  # sample_heun draws with randn_like from the global generator: the same draws as z
        theirs = ks.sample_heun(denoiser, x, sigmas, s_churn=2.0 * (steps + 1) / steps, disable=True, **churn)
    assert _rel(ours, theirs) < 1e-12
    assert _rel(ours, heun(score, process, x, ts)) > 1e-3  # the churn did something


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_pp_sde_is_k_diffusions(order):
    """dpm_solver_pp_sde of order 2 / 3 on the Karras grid ts equals k-diffusion's sample_dpmpp_2m_sde ('heun' form) /
    sample_dpmpp_3m_sde on sigmas = ts + [0] with the same normal draws: their step to sigma = 0 returns the
    denoiser's output, our final Tweedie step at sigma_min."""
    ks = _k_sampling()
    _, denoiser = _ring8_denoiser()
    score, process = interop.from_edm(denoiser, 0.002, 80.0)
    ts = schedules.karras(process, 9)
    sigmas = torch.cat([ts, ts.new_zeros(1)]).to(DEVICE)
    x = 80 * torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(DEVICE)
    g = torch.Generator(DEVICE).manual_seed(11)
    z = [torch.randn(x.shape, generator=g, device=DEVICE, dtype=torch.float64) for _ in range(9)]
    draws = iter(z)
    theirs = (ks.sample_dpmpp_3m_sde(denoiser, x, sigmas, disable=True, noise_sampler=lambda s, t: next(draws))
              if order == 3 else ks.sample_dpmpp_2m_sde(denoiser, x, sigmas, disable=True, solver_type="heun",
                                                         noise_sampler=lambda s, t: next(draws)))
    ours = dpm_solver_pp_sde(score, process, x, ts, order=order, noise=lambda i, y: z[i])
    assert _rel(ours, theirs) < 1e-12
    lower = dpm_solver_pp_sde(score, process, x, ts, order=order - 1, noise=lambda i, y: z[i])
    assert _rel(ours, lower) > 1e-4  # the order matters on this grid


@pytest.mark.parametrize("order, eta", [(3, 1.0), (3, 0.5), (2, 1.0)])
def test_dpm_solver_pp_sde_on_vp_is_k_diffusions_on_x_over_alpha(order, eta):
    """Under VP, x = alpha y with y k-diffusion's VE variable at sigma/alpha: our SDE-DPM-Solver++ on scaled_log_snr
    equals k-diffusion's on sigmas = sigma/alpha + [0] with the same draws (its noise sigma_next-scaled, ours sigma-)."""
    ks = _k_sampling()
    mixture, process = toy_data.load("aniso"), VP()
    score = mixture.score_fn(process)
    ts = schedules.scaled_log_snr(process, 9, 1.3)
    alpha, sigma = process.alpha(ts), process.sigma(ts)
    t_of = {float(r): t for r, t in zip((sigma / alpha).tolist(), ts.tolist())}

    def denoiser(y, r):  # E[x0 | x_t = alpha y]
        t = torch.tensor([t_of[float(r.reshape(-1)[0])]], dtype=torch.float64)
        a, sg = float(process.alpha(t)), float(process.sigma(t))
        return (a * y + sg**2 * score(a * y, t.to(y.device).expand(y.shape[0]))) / a

    x = process.prior((16, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(DEVICE)
    g = torch.Generator(DEVICE).manual_seed(13)
    z = [torch.randn(x.shape, generator=g, device=DEVICE, dtype=torch.float64) for _ in range(9)]
    draws = iter(z)
    sigmas = torch.cat([sigma / alpha, torch.zeros(1, dtype=torch.float64)]).to(DEVICE)
    y0 = x / float(alpha[0])
    if order == 3:
        theirs = ks.sample_dpmpp_3m_sde(denoiser, y0, sigmas, eta=eta, disable=True,
                                        noise_sampler=lambda s, t: next(draws))
    else:
        theirs = ks.sample_dpmpp_2m_sde(denoiser, y0, sigmas, eta=eta, solver_type="heun", disable=True,
                                        noise_sampler=lambda s, t: next(draws))
    ours = dpm_solver_pp_sde(score, process, x, ts, order=order, eta=eta, noise=lambda i, y: z[i])
    assert _rel(ours, theirs) < 1e-12
