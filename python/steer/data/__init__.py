"""The dataset layer: real examples in, synthetic samples out (``steer generate``), and the paper's
metrics, plots and report over them (``steer eval``, ``steer sweep``).

Submodules are imported on use: the metrics need scikit-learn, matplotlib and an embedding model
(the ``data`` extra), generation does not.
"""
