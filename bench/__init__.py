"""darkroom's benchmarks: ``python -m bench.queue`` (the request queue) and the scripts
``bench/bench_mini.py`` (darkroom-mini) and ``bench/bench_moderation.py`` (moderation)."""
