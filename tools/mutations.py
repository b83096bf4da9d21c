"""Mutation check of the property tests: does each test fail on a broken version of what it tests?

    python tools/mutations.py               every mutation
    python tools/mutations.py VE DiscreteVP only those whose name contains one of the words
    python tools/mutations.py --list        names and tests, nothing run
    python tools/mutations.py --jobs 4      four at once (each runs one test in one thread)

Each mutation replaces one function or method by a broken version (monkeypatched in a fresh interpreter before
pytest collects anything) and runs the one test that should catch it: caught when that test fails. A mutation whose
target no longer exists, or whose test is not found, is reported STALE, not caught. Prints one line per mutation,
then caught/total; the exit status is non-zero unless every mutation selected is caught.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
STALE = 99  # the child's exit status when the mutation's target is gone

# name -> (target "module:Owner.attribute" or "module:function", test node under tests/, make(original) -> broken)
MUTATIONS: dict[str, tuple[str, str, Callable]] = {}


def mutation(name: str, target: str, test: str):
    def register(make: Callable) -> Callable:
        MUTATIONS[name] = (target, test, make)
        return make

    return register


# -- toy_data: the exact mixture ------------------------------------------------------------------------------------
@mutation("score ignores responsibilities", "toy_data.mixture:GaussianMixture.score",
          "test_mixture.py::test_diffused_score_is_the_gradient_of_the_diffused_log_density")
def _(orig):
    def score(self, x, process=None, t=None):
        alpha, sigma = self._alpha_sigma(x, process, t)
        lp, y, var = self._components(x, alpha, sigma)
        r = torch.softmax(lp * 0, dim=1)
        return -((r[..., None] * y / var).reshape(x.shape[0], -1) @ self._params(x)[3].T).reshape(x.shape)

    return score


def _variance_08(orig):  # var = a² lam + 0.8 sigma², everywhere at once (self-consistent)
    return lambda self, x, alpha, sigma: orig(self, x, alpha, sigma * math.sqrt(0.8))


mutation("noised variance wrong but self-consistent (Vincent)", "toy_data.mixture:GaussianMixture._components",
         "test_mixture.py::test_vincents_identity")(_variance_08)
mutation("noised variance wrong but self-consistent (Stein)", "toy_data.mixture:GaussianMixture._components",
         "test_mixture.py::test_steins_identity")(_variance_08)


@mutation("samples use eigenvalues not their roots (Stein, clean)", "toy_data.mixture:GaussianMixture.sample",
          "test_mixture.py::test_steins_identity")
def _(orig):
    def sample(self, *args, **kwargs):
        lam, self.eigvals = self.eigvals, self.eigvals.square()  # sample() takes sqrt(eigvals)
        try:
            return orig(self, *args, **kwargs)
        finally:
            self.eigvals = lam

    return sample


@mutation("posterior mean drops alpha (Tweedie)", "toy_data.mixture:GaussianMixture.posterior_mean",
          "test_score.py::test_tweedie_gives_the_exact_posterior_mean")
def _(orig):
    def posterior_mean(self, x, process, t):
        alpha, sigma = self._alpha_sigma(x, process, t)
        _, mu, lam, u_flat, _ = self._params(x)
        lp, y, var = self._components(x, alpha, sigma)
        r = torch.softmax(lp, dim=1)
        shift = (r[..., None] * (lam * y / var)).reshape(x.shape[0], -1) @ u_flat.T
        return (r @ mu + shift).reshape(x.shape)

    return posterior_mean


@mutation("class posterior forgets a component", "toy_data.mixture:GaussianMixture.class_log_prob",
          "test_mixture.py::test_class_posterior_is_bayes_rule")
def _(orig):
    def class_log_prob(self, x, process=None, t=None):
        lp, _, _ = self._components(x, *self._alpha_sigma(x, process, t))
        member = self.labels.to(x.device)[None, :] == torch.arange(self.num_classes, device=x.device)[:, None]
        masked = torch.where(member, lp[:, None, :], lp.new_tensor(-math.inf))
        return masked.max(dim=2).values - torch.logsumexp(lp, dim=1, keepdim=True)

    return class_log_prob


# -- processes ------------------------------------------------------------------------------------------------------
@mutation("alpha_bar uses -beta for log(1-beta)", "scoresde.processes:DiscreteVP.__init__",
          "test_processes.py::test_ddpm_one_step_transitions_compose_to_the_marginal")
def _(orig):
    def init(self, betas):
        orig(self, betas)
        self.log_alphas_cumprod = torch.cat([self.betas.new_zeros(1), torch.cumsum(-self.betas, 0)])
        self.alphas_cumprod = self.log_alphas_cumprod[1:].exp()

    return init


@mutation("posterior std = sigma_ts (beta, not beta tilde)", "scoresde.processes:Process.posterior_coefficients",
          "test_processes.py::test_ddpm_posterior_is_bayes_rule")
def _(orig):
    def posterior_coefficients(self, s, t):
        c_x0, c_xt, _ = orig(self, s, t)
        return c_x0, c_xt, self.transition(s, t)[1]

    return posterior_coefficients


@mutation("posterior x_t coefficient drops alpha_ts", "scoresde.processes:Process.posterior_coefficients",
          "test_processes.py::test_posterior_between_any_two_times_is_bayes_rule")
def _(orig):
    def posterior_coefficients(self, s, t):
        c_x0, c_xt, std = orig(self, s, t)
        return c_x0, c_xt / self.transition(s, t)[0], std

    return posterior_coefficients


@mutation("VE g² loses its factor 2", "scoresde.processes:VE._g2",
          "test_processes.py::test_drift_and_diffusion_reproduce_the_marginal")
def _(orig):
    return lambda self, t: self._log_ratio * self._sigma(t) ** 2


@mutation("sub-VP g² = beta (the VP one)", "scoresde.processes:SubVP._g2",
          "test_processes.py::test_drift_and_diffusion_reproduce_the_marginal")
def _(orig):
    return lambda self, t: self.beta(t)


@mutation("DiscreteVP f off by one interval", "scoresde.processes:DiscreteVP._slope",
          "test_processes.py::test_drift_and_diffusion_reproduce_the_marginal")
def _(orig):
    def slope(self, t):
        table = self._table(t)
        i = torch.ceil(t * self.N - 1e-9).clamp(1, self.N - 1).long() + 1
        return (table[i] - table[i - 1]) * self.N

    return slope


@mutation("VP inverse log-SNR sign", "scoresde.processes:VP._t_from_log_snr",
          "test_processes.py::test_log_snr_and_its_inverse")
def _(orig):
    return lambda self, log_snr: self._t_from_int_beta(torch.nn.functional.softplus(log_snr))


@mutation("sub-VP inverse log-SNR root", "scoresde.processes:SubVP._t_from_log_snr",
          "test_processes.py::test_log_snr_and_its_inverse")
def _(orig):
    def t_from_log_snr(self, log_snr):
        r = torch.exp(0.5 * log_snr)
        return self._t_from_int_beta(-2.0 * torch.log(r / (1.0 + torch.sqrt(1.0 + 4.0 * r**2))))

    return t_from_log_snr


# -- score conversions ----------------------------------------------------------------------------------------------
@mutation("v -> eps assumes alpha²+sigma²=1", "scoresde.score:_to_eps",
          "test_score.py::test_adapter_round_trips_are_the_identity")
def _(orig):
    return lambda src, value, x, a, s: s * x + a * value if src == "v" else orig(src, value, x, a, s)


@mutation("x0 from eps forgets 1/alpha", "scoresde.score:_from_eps",
          "test_score.py::test_tweedie_gives_the_exact_posterior_mean")
def _(orig):
    def from_eps(dst, eps, x, a, s):
        if dst in ("eps", "score"):
            return orig(dst, eps, x, a, s)
        x0 = x - s * eps
        return x0 if dst == "x0" else a * eps - s * x0

    return from_eps


# -- losses and the trainer -----------------------------------------------------------------------------------------
@mutation("DSM takes every prediction for eps", "scoresde.losses:convert",
          "test_losses.py::test_every_prediction_kind_gives_the_same_loss")
def _(orig):
    return lambda value, x, alpha, sigma, *, src, dst: value


@mutation("min_snr ignores snr_gamma", "scoresde.losses:dsm_loss",
          "test_losses.py::test_weightings_are_sigma2_g2_min_snr_and_one")
def _(orig):
    return lambda *args, snr_gamma=5.0, **kwargs: orig(*args, **kwargs)


@mutation("importance weights forgotten", "scoresde.losses:ImportanceSampler.__call__",
          "test_losses.py::test_importance_sampling_is_unbiased_for_the_likelihood_weighting")
def _(orig):
    def call(self, *args, **kwargs):
        t, weight = orig(self, *args, **kwargs)
        return t, torch.ones_like(weight)

    return call


@mutation("label dropout never drops", "scoresde.losses:DSMLoss.__call__",
          "test_losses.py::test_the_dsm_loss_object_is_dsm_loss_with_label_dropout_to_the_null_label")
def _(orig):
    def call(self, *args, **kwargs):
        rate, self.label_dropout = self.label_dropout, 0.0
        try:
            return orig(self, *args, **kwargs)
        finally:
            self.label_dropout = rate

    return call


@mutation("resume restarts the data streams", "scoresde.training.loop:_streams",
          "test_train.py::test_resume_gives_the_identical_loss_sequence")
def _(orig):
    return lambda config, ctx, device, states: orig(config, ctx, device, None)


@mutation("train() ignores the loss object it is given", "scoresde.training.loop:_setup",
          "test_train.py::test_a_loss_object_replaces_the_default")
def _(orig):
    return lambda config, ctx, device, out, resume, data, loss: orig(config, ctx, device, out, resume, data, None)


@mutation("format-1 checkpoints read as format 2", "scoresde.training.checkpoint:_upgrade",
          "test_train.py::test_the_process_is_a_config_and_older_checkpoints_load_as_they_were_meant")
def _(orig):
    return lambda meta: meta


# -- energies and Boltzmann samplers --------------------------------------------------------------------------------
@mutation("energy_score drops 1/kT", "scoresde.energies:energy_score",
          "test_energies.py::test_ula_stationary_variance_on_a_harmonic_well_is_its_closed_form_in_eta")
def _(orig):
    return lambda energy, kT=1.0: orig(energy, 1.0)


@mutation("tempered multiplies by T", "scoresde.energies:tempered",
          "test_energies.py::test_scores_of_other_kinds_plug_in_and_tempering_is_a_temperature")
def _(orig):
    return lambda score, T: orig(score, 1.0 / T)


@mutation("ULA drift sign", "scoresde.samplers.mcmc:ula",
          "test_energies.py::test_ula_stationary_variance_on_a_harmonic_well_is_its_closed_form_in_eta")
def _(orig):
    return lambda score, *args, **kw: orig(lambda x: -score(x), *args, **kw)


@mutation("quadrature at kT = 1", "scoresde.energies:reference",
          "test_energies.py::test_quadrature_references_match_closed_forms")
def _(orig):
    return lambda landscape, kT, *args, **kw: orig(landscape, 1.0, *args, **kw)


@mutation("R-hat without between-chain variance", "scoresde.evaluation.mcmc:rhat",
          "test_energies.py::test_ess_and_rhat_on_ar1_chains_with_known_autocorrelation")
def _(orig):
    return lambda chains, *args, **kw: 1.0


# -- running ----------------------------------------------------------------------------------------------------------
def apply(name: str) -> None:
    """Replace the mutation's target by its broken version (in this interpreter)."""
    target, _, make = MUTATIONS[name]
    module_name, path = target.split(":")
    *owners, attr = path.split(".")
    owner = importlib.import_module(module_name)
    for part in owners:
        owner = getattr(owner, part)
    if attr not in vars(owner):
        raise LookupError(f"{target} no longer exists")
    setattr(owner, attr, make(vars(owner)[attr]))


class _FirstFailure:
    """A pytest plugin: hypothesis stops at the first failing example (no shrinking, no explaining, no files)."""

    def pytest_configure(self, config) -> None:  # after tests/conftest.py has loaded its profile
        from hypothesis import Phase, settings

        settings.register_profile("mutant", settings(settings.default, database=None,
                                                     phases=[Phase.explicit, Phase.generate]))
        settings.load_profile("mutant")


def _child(name: str) -> int:
    try:
        apply(name)
    except (LookupError, AttributeError, ImportError) as e:
        print(f"stale target: {e}")
        return STALE
    import pytest

    args = ["-x", "-q", "-p", "no:warnings", "-p", "no:cacheprovider", f"tests/{MUTATIONS[name][1]}"]
    return int(pytest.main(args, plugins=[_FirstFailure()]))


def _run(name: str, env: dict) -> tuple[str, str]:
    """(status, the last lines of pytest's output) of one mutation, run in a fresh interpreter."""
    r = subprocess.run([sys.executable, __file__, "--child", name], cwd=ROOT, env=env, capture_output=True, text=True)
    # pytest's exit status 1: a test failed; 0: all passed; 4, 5: the test is not found; 2, 3: an error
    status = {0: "MISSED", 1: "CAUGHT", 4: "STALE", 5: "STALE", STALE: "STALE"}.get(r.returncode, "ERROR")
    return status, "\n        ".join(r.stdout.strip().splitlines()[-3:])


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return _child(argv[1])
    p = argparse.ArgumentParser(description="Mutation check of the property tests.")
    p.add_argument("words", nargs="*", help="run only the mutations whose name contains one of these")
    p.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    p.add_argument("--jobs", type=int, default=1, help="mutations run at once (default 1)")
    args = p.parse_args(argv)
    chosen = [n for n in MUTATIONS if not args.words or any(w in n for w in args.words)]
    if args.list:
        for name in chosen:
            print(f"{name:55s} {MUTATIONS[name][1]}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:  # hypothesis writes its patch files for the failures here
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HYPOTHESIS_STORAGE_DIRECTORY": scratch}
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = pool.map(lambda name: (name, *_run(name, env)), chosen)
            caught = 0
            for name, status, tail in results:
                caught += status == "CAUGHT"
                print(f"{status:7s} {name:55s} {MUTATIONS[name][1]}", flush=True)
                if status in ("STALE", "ERROR"):
                    print("        " + tail, flush=True)
    print(f"caught {caught}/{len(chosen)} in {time.perf_counter() - t0:.0f} s")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
