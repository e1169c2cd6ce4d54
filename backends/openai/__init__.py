"""OpenAI-compatible servers: ChatRTX 0.5's NIM, Ollama, LM Studio, llama.cpp, vLLM, the
ChatRTX 0.4/0.5 bridge (``bridge.py`` in ``backends/chatrtx``), another ``rtxrelay serve``."""
