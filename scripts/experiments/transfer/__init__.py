"""The transfer experiment: does anatomy-informed synthetic pre-training help real segmentation more than primitive
shapes, and more than no pre-training? ``plan`` (settings and stages), ``report`` (Dice tables), ``ablation`` (the
arms without one component of the method, and the data-volume curve, on top of a main run), ``pack`` (what must
outlast a lent machine) and ``command`` (the ``run``/``ablate``/``pack``/``unpack`` command line of
``scripts/run_transfer_experiment.py``); the stages run on :mod:`experiments.runner`."""
