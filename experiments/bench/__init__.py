"""Speed and memory benchmarks of steerjax, and the PyTorch reference they compare with."""
