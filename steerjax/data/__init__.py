"""Training and evaluation data: TinyStories concepts, AxBench, batching."""
