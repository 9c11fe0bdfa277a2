"""Tasks: the intent taxonomy (taxonomy.py), query families with ground truth computed from
the world (families*.py, query.py), and the oracle that solves them through the tools
(oracle*.py). `stagent-ray tasks ...` is in cli.py."""
