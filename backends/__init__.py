"""``Backend`` implementations (the seam is ``rtxrelay.core.backend``): ``chatrtx`` speaks
Chat with RTX's Gradio queue protocol; ``discover`` finds a running Chat with RTX."""
