"""Masked diffusion adapters for mmrl (LLaDA/Dream-style dLLMs, aMUSEd). Not implemented yet."""
