"""Benchmarks of the offline_rl package, kept outside it (the library never imports them).

``python -m benchmarks.bench`` (``make bench``): update and pre-training steps, CORL-style eager vs
this package's eager and compiled steps, and independent runs side by side on one GPU. Run from the
checkout's root, where ``benchmarks`` is importable.
"""
