"""Evaluation: prompt design or a plug-in on a task, saved plug-ins, mixed batches, ensembles."""
