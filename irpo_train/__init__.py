"""irpo_train: the DPO+NLL trainer of Iterative RPO (reads runs/NAME/iter_T/pairs)."""
