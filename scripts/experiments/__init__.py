"""Experiments run by ``scripts/run_*.py``: a generic resumable stage runner (``runner``) and one package per
experiment (``transfer``). Not installed; imported by the names the scripts use (see ``scripts/_bundles.py``)."""
