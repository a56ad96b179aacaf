"""One module per command (a paper finding, or train, eval, grade, reproduce), each following
the contract in `registry.py`; `common.py` and `scans.py` hold what several of them share."""
