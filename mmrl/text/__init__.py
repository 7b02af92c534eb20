from mmrl.text.adapter import CausalLMAdapter  # noqa: F401
