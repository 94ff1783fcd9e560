"""Training: the one loop for every plug-in, the fine-tuning baselines and the PEFT reference."""
