"""The zoo: a local hub of small models made by real training, with ground truth beside it."""
