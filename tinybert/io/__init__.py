"""Files: HF checkpoints (config.json + model.safetensors) and the atomic writes every save goes through."""
