"""CI, test and people metrics computed in SQL in the store, with their definitions."""
