"""Mutation check for the property tests: `python tests/mutations.py`.

Apply one mutation at a time to a scratch copy and check that the named property test fails."""
import pathlib
import shutil
import subprocess
import sys
import tempfile
SRC = pathlib.Path(__file__).resolve().parents[1]
MUTS = [
 ("score ignores responsibilities", "toy_data/mixture.py", "r = torch.softmax(lp, dim=1)  # responsibilities", "r = torch.softmax(lp * 0, dim=1)  #", "test_mixture.py::test_diffused_score_is_the_gradient_of_the_diffused_log_density"),
 ("alpha_bar uses -beta for log(1-beta)", "scoresde/processes.py", "torch.cumsum(torch.log1p(-betas), 0)", "torch.cumsum(-betas, 0)", "test_processes.py::test_ddpm_one_step_transitions_compose_to_the_marginal"),
 ("posterior std = sigma_ts (beta, not beta tilde)", "scoresde/processes.py", "std = sigma_ts * s_s / s_t", "std = sigma_ts", "test_processes.py::test_ddpm_posterior_is_bayes_rule"),
 ("posterior x_t coefficient drops alpha_ts", "scoresde/processes.py", "c_xt = alpha_ts * s_s**2 / s_t**2", "c_xt = s_s**2 / s_t**2", "test_processes.py::test_posterior_between_any_two_times_is_bayes_rule"),
 ("v -> eps assumes alpha²+sigma²=1", "scoresde/score.py", "return (s * x + a * value) / (a**2 + s**2)  # v", "return (s * x + a * value)  # v", "test_score.py::test_adapter_round_trips_are_the_identity"),
 ("x0 from eps forgets 1/alpha", "scoresde/score.py", "x0 = (x - s * eps) / a", "x0 = (x - s * eps)", "test_score.py::test_tweedie_gives_the_exact_posterior_mean"),
 ("noised variance wrong but self-consistent (Vincent)", "toy_data/mixture.py", "var = a**2 * lam + (sigma**2).reshape(-1, 1, 1)  # (B or 1, K, D)", "var = a**2 * lam + 0.8 * (sigma**2).reshape(-1, 1, 1)  # (B or 1, K, D)", "test_mixture.py::test_vincents_identity"),
 ("noised variance wrong but self-consistent (Stein)", "toy_data/mixture.py", "var = a**2 * lam + (sigma**2).reshape(-1, 1, 1)  # (B or 1, K, D)", "var = a**2 * lam + 0.8 * (sigma**2).reshape(-1, 1, 1)  # (B or 1, K, D)", "test_mixture.py::test_steins_identity"),
 ("samples use eigenvalues not their roots (Stein, clean)", "toy_data/mixture.py", "lam[comp].sqrt() * z", "lam[comp] * z", "test_mixture.py::test_steins_identity"),
 ("posterior mean drops alpha (Tweedie)", "toy_data/mixture.py", "a * lam * y / var", "lam * y / var", "test_score.py::test_tweedie_gives_the_exact_posterior_mean"),
 ("VE g² loses its factor 2", "scoresde/processes.py", "return 2.0 * self._log_ratio * self._sigma(t) ** 2", "return self._log_ratio * self._sigma(t) ** 2", "test_processes.py::test_drift_and_diffusion_reproduce_the_marginal"),
 ("sub-VP g² = beta (the VP one)", "scoresde/processes.py", "return self.beta(t) * -torch.expm1(-2.0 * self._int_beta(t))", "return self.beta(t)", "test_processes.py::test_drift_and_diffusion_reproduce_the_marginal"),
 ("DiscreteVP f off by one interval", "scoresde/processes.py", "i = torch.ceil(t * self.num_steps - 1e-9).clamp(1, self.num_steps).long()", "i = torch.ceil(t * self.num_steps - 1e-9).clamp(1, self.num_steps - 1).long() + 1", "test_processes.py::test_drift_and_diffusion_reproduce_the_marginal"),
 ("VP inverse log-SNR sign", "scoresde/processes.py", "softplus(-log_snr)", "softplus(log_snr)", "test_processes.py::test_log_snr_and_its_inverse"),
 ("sub-VP inverse log-SNR root", "scoresde/processes.py", "alpha = 2.0 * r / (1.0 + torch.sqrt(1.0 + 4.0 * r**2))", "alpha = r / (1.0 + torch.sqrt(1.0 + 4.0 * r**2))", "test_processes.py::test_log_snr_and_its_inverse"),
 ("reference target drops the own point", "scoresde/losses.py", "kept = torch.where(exclude_own, torch.full_like(own, float(\"-inf\")), own)", "kept = torch.full_like(own, float(\"-inf\"))", "test_losses.py::test_reference_x0_with_the_own_point_is_unbiased_and_without_it_is_not"),
 ("reference target keeps the own point of widened samples", "scoresde/losses.py", "kept = torch.where(exclude_own, torch.full_like(own, float(\"-inf\")), own)", "kept = own", "test_losses.py::test_reference_x0_with_the_own_point_is_unbiased_and_without_it_is_not"),
 ("reference target's own distance on another scale", "scoresde/losses.py", "- xt.square().sum(1)) / (2 * s2[:, 0])", ") / (2 * s2[:, 0])", "test_losses.py::test_reference_x0_with_the_own_point_is_unbiased_and_without_it_is_not"),
 ("widened samples not weighted 1 / c²", "scoresde/losses.py", "        loss = loss / c.square()\n", "        loss = loss\n", "test_losses.py::test_widened_noise_is_log_uniform_at_t_above_widen_t_min_and_weighted_one_over_c2"),
 ("class-conditional reference mean over every label", "scoresde/losses.py", "masked = torch.where(same, logit, torch.full_like(logit, float(\"-inf\")))", "masked = logit.clone()", "test_losses.py::test_reference_posterior_is_unbiased_for_the_class_and_the_class_conditional_mean"),
 ("class posterior forgets a component", "toy_data/mixture.py", "log_joint = torch.logsumexp(masked, dim=2)", "log_joint = masked.max(dim=2).values", "test_mixture.py::test_class_posterior_is_bayes_rule"),
]
only = sys.argv[1:]
ok = True
for name, path, old, new, test in MUTS:
    if only and not any(o in name for o in only):
        continue
    dst = pathlib.Path(tempfile.gettempdir()) / "scoresde-mutant"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(SRC, dst, ignore=shutil.ignore_patterns(".git", ".hypothesis", "__pycache__", "benchmarks", "runs"))
    f = dst / path
    text = f.read_text()
    assert text.count(old) == 1, (name, old)
    f.write_text(text.replace(old, new))
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:warnings", "-p", "no:cacheprovider", f"tests/{test}"],
                       cwd=dst, capture_output=True, text=True, env={"PYTHONPATH": str(dst), "PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    caught = r.returncode != 0 and " failed" in r.stdout
    ok &= caught
    print(f"{'CAUGHT' if caught else 'MISSED'}  {name:55s} {test}", flush=True)
print("all caught" if ok else "SOME MISSED")
