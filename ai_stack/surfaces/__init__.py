"""The other APIs clients speak, each a thin translation over the one chat pipeline (serving.chat).

completions: OpenAI's legacy /v1/completions (fill-in-the-middle) and llama.cpp's /infill, /completion;
ollama: Ollama's /api/*; responses: OpenAI's /v1/responses; messages: Anthropic's /v1/messages.
"""
