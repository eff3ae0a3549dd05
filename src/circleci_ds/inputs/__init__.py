"""What the user gives: the da-ds fixture, the identities file, and the YAML guards they share."""
