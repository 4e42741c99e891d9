"""Benchmark CLI for flash256: ``python -m flash256.bench --help``.

Modules:
  cli       argument parsing (BenchConfig) and the top-level ``main``
  backends  one small adapter per attention implementation
  flops     exact FLOP counts (causal and sliding windows count only visible keys)
  timing    CUDA-event timing with warm-up, L2 flush and median
  check     correctness check against the fp32 reference
  run       the sweep: shapes x backends x directions -> Measurement records
  report    markdown tables, ratios, JSON and the PNG plot
  env       GPU / software environment for the report header and JSON
"""
