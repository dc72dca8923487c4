"""Experiment tooling on top of the runners: sweeps, reports, plots, the calibration study and the demo."""
