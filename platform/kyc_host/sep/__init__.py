"""SEP protocol modules: one module per SEP (sep1, sep9, sep10, sep12)."""
