"""Runners: a validated Config -> data, models, objective and Trainer, for train, distill and mutual."""
