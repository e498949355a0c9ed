"""The offline testbed: tiny tokenizer and Llama, LoRA bank, pool and target tasks."""
