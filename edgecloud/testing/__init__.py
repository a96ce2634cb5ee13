"""Test models made here: small GGUF files with random weights that the real llama.cpp loads."""
