"""Trainers: advantage estimators and losses shared by every backend, batching and packing, the
PyTorch trainer, and weight sync to the inference engines."""
