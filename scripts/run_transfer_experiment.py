"""The transfer experiment, end to end through the bundles: does anatomy-informed synthetic pre-training help real
segmentation more than primitive shapes, and more than no pre-training?

0. with ``--preset cpu``: build the pre-training bank at the preset's spacing from the five subjects;
1. pre-train SwinUNETR twice with identical settings and budget: ``anatomy_pretrain`` (anatomy-informed shells) and
   ``anatomy_pretrain`` + ``primitives.json`` (the primitive-shape baseline);
2. fine-tune ``swin_unetr_finetune`` + ``msd_hippocampus.json`` in three arms (scratch, primitives, anatomy) and two
   data regimes (few-shot: a fixed, recorded subset of the training split; all: the whole training split), with the
   same iterations and seeds in every arm;
3. evaluate every fine-tuned network (its final weights, never a checkpoint chosen on the reporting split) on the
   ``validation`` split: Dice per class and overall;
4. write ``results.json`` and ``results.md``: Dice per arm and class (mean ± std over seeds), paired per-seed
   differences anatomy - scratch and anatomy - primitives with 95 % bootstrap intervals, learning curves (tables and
   PNGs; reported only), commands, device, date, iterations and wall time per stage.

``check_pretrain`` scores each pre-trained network on its own synthetic validation samples, by class and as foreground
against background (``scripts/experiments/transfer/synthetic_check.py``). ``encoder_drift`` measures how far each
fine-tuning moved its encoder from where it started (``scripts/experiments/transfer/encoder_drift.py``).

``ablate`` runs the ablation arms on a finished (or running) main run's recipe: pre-training without anchors, without
topology checks, with filled organs, and on a fixed pool of N distinct samples, each fine-tuned few-shot like the main
arms and compared with the main run's full method (``scripts/experiments/transfer/ablation.py``).

Every stage is one ``python -m monai.bundle run`` with its log in ``<out>/logs``; a stage runs in ``<folder>.partial``
and is renamed when it succeeds, so a failure leaves no half-written stage and a rerun resumes after the last stage
that finished. The code is in ``scripts/experiments/transfer`` (plan, estimate, report, stats, curves, pack, command)
on the generic stage runner ``scripts/experiments/runner.py``. Examples::

    python scripts/run_transfer_experiment.py run --out runs/transfer                 # the GPU protocol (--preset gpu)
    python scripts/run_transfer_experiment.py run --out runs/cpu --preset cpu --jobs 2 --dry_run  # plan + estimate
    python scripts/run_transfer_experiment.py run --out runs/cpu --preset cpu --jobs 2  # the 2-core CPU protocol
    python scripts/run_transfer_experiment.py run --out runs/transfer --quick         # tiny CPU run (--preset quick)
    python scripts/run_transfer_experiment.py run --out runs/cpu --preset cpu --seeds 0,1 --finetune_iterations 300
    python scripts/run_transfer_experiment.py run --out runs/transfer --only 'pretrain_*'
    python scripts/run_transfer_experiment.py ablate --out runs/ablation --main_run runs/transfer --dry_run
    python scripts/run_transfer_experiment.py check_pretrain --out runs/transfer  # did each pre-training learn?
    python scripts/run_transfer_experiment.py encoder_drift --out runs/transfer   # did fine-tuning keep the encoder?
    python scripts/run_transfer_experiment.py pack --out runs/transfer --dest $OUT    # what must outlast a machine
    python scripts/run_transfer_experiment.py unpack --src returned/ --out runs/transfer
"""

from __future__ import annotations

from experiments.transfer.command import main

if __name__ == "__main__":
    main()
