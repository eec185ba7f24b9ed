"""`irpo run`: the whole Iterative RPO loop (build → train → eval, t = 1..T) in one command.

This package holds no stage logic: it calls irpo_data, irpo_train and irpo_eval in order and
decides, from the run folder alone, which stages are already done.
"""
