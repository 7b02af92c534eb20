"""Video-LLM adapter for mmrl (frame sampling with decord, Qwen-VL video inputs). Not implemented yet."""
