"""What is maximised and how a model is scored, over a model's :class:`~pyrovae.models.terms.Terms`:
``estimators`` (analytic, mc, iwae), ``elbos`` (the same as Pyro ELBOs, and IWAE), ``algorithms``
(aevb, wake_sleep, mcem: one step's loss each), ``wake_sleep``, ``hmc`` (chains and
hmc_log_likelihood) and ``evaluate`` (test ELBO, IWAE_K, NLL, active units)."""
