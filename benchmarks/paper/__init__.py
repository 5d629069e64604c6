"""The SAO paper reproduction (run ``python benchmarks/paper/reproduce.py``); see reproduce.py."""
