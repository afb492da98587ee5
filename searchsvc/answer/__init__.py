"""Grounded answers: the LLM layer (llm.py, gguf.py) and the answer pipeline around it."""
