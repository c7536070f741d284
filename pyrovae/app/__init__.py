"""The application: configs, plugins, run folders, checkpoints, figures and the command line.
Nothing below imports it; ``run.train(config, out)`` turns a config into a run folder."""
