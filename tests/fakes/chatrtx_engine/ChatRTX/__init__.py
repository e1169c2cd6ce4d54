"""A stand-in for NVIDIA's ``ChatRTX`` package (the ChatRTX_APIs wheel of ChatRTX 0.4/0.5),
for the bridge's tests (tests/backends/test_chatrtx_bridge.py). Our own code, written from the
documented signatures; see ``chatrtx.py``. It runs inside the bridge's Python 3.10 subprocess."""
