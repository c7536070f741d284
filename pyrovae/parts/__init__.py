"""The parts a family is built from, each a registry a config names: ``priors`` (p(z)),
``likelihoods`` (p(x | z)), ``posteriors`` (q(z | x) from an encoder's output) and ``nets``
(encoders, decoders, classifiers). Parts know nothing of families, training or run folders."""
