"""The seam from the data to the model: every path goes through :class:`~pyrovae.data.batch.Batch`.

- ``batch``: :class:`Batch`, what a model reads (points, labels, the labelled mask, weights);
- ``sampling``: epoch plans, each step's training points from (seed, epoch) only;
- ``sources``: readers of each data source (digits, MNIST, Frey Face, a user's file), checked;
- ``datasets``: :class:`Dataset` (the splits, in memory: the fast case of the seam) and ``load_dataset``.
"""
