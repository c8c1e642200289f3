"""Weights as data: the one safetensors reader, layer statistics, sketches, probe fingerprints."""
