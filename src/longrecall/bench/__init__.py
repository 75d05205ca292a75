from .speed import BenchSpec, run_bench

__all__ = ["BenchSpec", "run_bench"]
