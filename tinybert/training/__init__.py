"""Pretraining and fine-tuning: the loop, its tasks and data, metrics, plots and run folders."""
