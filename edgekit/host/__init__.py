"""The host side: PyTorch. Training, pruning, distillation, export and quantization, and the stage
driver that runs them into one artifacts folder."""
