"""The device side: Python 3.8, never torch. Runtimes, engines, benchmarks, the artifact layout and
the job runner that a deploy runs on the board."""
