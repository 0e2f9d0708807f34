"""Files: HF checkpoints (config.json + model.safetensors), the atomic writes every save goes through,
and figures (PNG files, CJK fonts)."""
