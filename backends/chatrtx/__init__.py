"""Chat with RTX 0.2/0.3 over the Gradio queue protocol (``docs/gradio-protocol.md``).

``gradio_client`` knows Gradio (config, queue, SSE, diffs, cancel), not Chat with RTX;
``backend`` adds what is Chat with RTX's own: the session check, finding the chat function,
the chatbot's shapes, and turning its answer HTML into neutral Markdown (``answer_html``).
"""
