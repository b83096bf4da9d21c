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
 ('logit temperature', 'scoresde/losses.py', '    rows = torch.cat([xt * (a / s2), -a.square() / (2 * s2)], 1)  # (B, D + 1)', '    rows = torch.cat([xt * (a / s2), -a.square() / (2 * s2)], 1) * 0.7  # (B, D + 1)', 'test_losses.py::test_the_reference_target_is_the_exact_score_for_a_large_reference'),
 ('widen_t_min ignored', 'scoresde/losses.py', '< widen_frac) \\\n            & (t >= widen_t_min)', '< widen_frac) \\\n            & (t >= 0)', 'test_losses.py::test_widened_noise_is_log_uniform_at_t_above_widen_t_min_and_weighted_one_over_c2'),
 ('trainer drops ref for score nets', 'scoresde/train.py', '            kwargs.update(ref)\n', '', 'test_train.py::test_reference_batch_reaches_the_loss_resumes_exactly_and_checks_its_input'),
 ('trainer drops ref for classifiers', 'scoresde/train.py', 'return classifier_loss(model, process, x0, y, generator=gen, **ref)', 'return classifier_loss(model, process, x0, y, generator=gen)', 'test_train.py::test_reference_batch_reaches_the_loss_resumes_exactly_and_checks_its_input'),
 ('trainer drops ref for guided_dsm', 'scoresde/train.py', '                                                  generator=gen, **ref).float().mean()', '                                                  generator=gen).float().mean()', 'test_train.py::test_reference_batch_reaches_the_loss_resumes_exactly_and_checks_its_input'),
 ('classifier soft labels ignored', 'scoresde/losses.py', '    return torch.nn.functional.cross_entropy(logits.to(p_hat.dtype), p_hat, reduction="none")\n', '    return torch.nn.functional.cross_entropy(logits, labels.long(), reduction="none")\n', 'test_losses.py::test_classifier_losses_with_a_reference_check_their_input_and_widen'),
 ('classifier keeps own point of widened', 'scoresde/losses.py', 'reference_labels, logits.shape[-1], wide)\n    return', 'reference_labels, logits.shape[-1], None)\n    return', 'test_losses.py::test_classifier_losses_with_a_reference_check_their_input_and_widen'),
 ('guided_dsm target over all labels', 'scoresde/losses.py', '        eps = to_eps("x0", x0_hat, x_t.detach(), alpha, sigma)', '        eps = to_eps("x0", reference_x0(x_t, alpha, sigma, x0, reference, wide), x_t.detach(), alpha, sigma)', 'test_losses.py::test_guided_dsm_with_a_reference_targets_the_class_conditional_score'),
 ('guided_dsm plain eps target', 'scoresde/losses.py', '        eps = to_eps("x0", x0_hat, x_t.detach(), alpha, sigma)\n', '', 'test_losses.py::test_guided_dsm_with_a_reference_targets_the_class_conditional_score'),
 ('reference drawn in autocast', 'scoresde/losses.py', '    return torch.autocast(x.device.type, enabled=False) if x.device.type in ("cuda", "cpu") else nullcontext()', '    return nullcontext()', 'test_losses.py::test_reference_estimates_are_untouched_by_bf16_autocast'),
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
